/* shm_api.c: shared_memory_area() and the SHM_ALLOC* macros, for tests/all/storage.rs.
   Allocations are made in main(), so they are the same in every request VM.

     info       the area and where each allocation landed (checks in the text)
     set?v=N    *shared_long = N: "vm=<request VM> set=N"
     get        "vm=<request VM> shared=<*shared_long> private=<per-request counter>"
     inc        __sync_fetch_and_add on a shared int: "c=<old value>" */
#include "kvm_api.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long *shared_long;
static int *counter;
static struct {
	char c;
	double d;
} pair;
static __typeof__(pair) *shared_pair;
static char *shared_bytes;
static void *too_big;
static long private_count;

static void respond(const char *text)
{
	backend_response(200, "text/plain", 10, text, strlen(text));
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char out[512];
	const int vm = vcpureqid();
	private_count++;
	if (strstr(url, "/info")) {
		const struct shared_memory_info a = shared_memory_area();
		int local;
		const uint64_t p = (uint64_t)(uintptr_t)&local;
		snprintf(out, sizeof(out),
			"ptr=%#lx end=%#lx size=%lu stack_below=%d long_at_start=%d int_off=%lu pair_off=%lu "
			"bytes_off=%lu too_big=%s",
			(unsigned long)a.ptr, (unsigned long)a.end, (unsigned long)(a.end - a.ptr),
			p < a.ptr, (uint64_t)(uintptr_t)shared_long == a.ptr,
			(unsigned long)((uintptr_t)counter - a.ptr),
			(unsigned long)((uintptr_t)shared_pair - a.ptr),
			(unsigned long)((uintptr_t)shared_bytes - a.ptr), too_big ? "non-null" : "null");
	} else if (strstr(url, "/set")) {
		const char *v = strstr(url, "v=");
		*shared_long = v ? strtol(v + 2, NULL, 10) : 0;
		snprintf(out, sizeof(out), "vm=%d set=%ld", vm, *shared_long);
	} else if (strstr(url, "/get")) {
		snprintf(out, sizeof(out), "vm=%d shared=%ld private=%ld", vm, *shared_long,
			private_count);
	} else {
		snprintf(out, sizeof(out), "c=%d", __sync_fetch_and_add(counter, 1));
	}
	respond(out);
}

int main(void)
{
	shared_long = SHM_ALLOC_TYPE(long);        /* a type */
	counter = SHM_ALLOC_TYPE(*counter);        /* an expression, as in the seed */
	shared_pair = SHM_ALLOC(pair);             /* alignment of double */
	shared_bytes = SHM_ALLOC_BYTES(100);       /* 8-byte aligned */
	too_big = SHM_ALLOC_BYTES(64u << 20);      /* more than the area: NULL */
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
