/* live_state.c: a storage counter that survives live updates.
   GET /live_state -> "count=N" (N increments in storage on every request).
   On a live update, the old storage VM hands its counter over in on_live_update(),
   and the new one takes it in on_live_restore(). A copy whose `restore_mode` string is
   patched to "restore-mode-crash" crashes in on_live_restore() instead (tests/all/storage.rs). */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

static long counter;
static const char restore_mode[] = "restore-mode-taken";
/* Read through a volatile pointer so the comparison is not folded at compile time. */
static const char *volatile restore_mode_p = restore_mode;

static void increment(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	counter++;
	storage_return(&counter, sizeof(counter));
}

static void on_live_update(void)
{
	storage_return(&counter, sizeof(counter));
}

/* An address the compiler cannot see through (no -Warray-bounds warning). */
static volatile uintptr_t bad_address = 8;

static void on_live_restore(size_t len)
{
	(void)len;
	if (strcmp(restore_mode_p, "restore-mode-crash") == 0)
		*(volatile long *)bad_address = 1;
	storage_return(&counter, sizeof(counter));
}

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	long value = -1;
	storage_call(increment, NULL, 0, &value, sizeof(value));
	char out[64];
	const int n = snprintf(out, sizeof(out), "count=%ld", value);
	backend_response(200, "text/plain", 10, out, (size_t)n);
}

int main(void)
{
	if (IS_STORAGE()) {
		set_on_live_update(on_live_update);
		set_on_live_restore(on_live_restore);
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
