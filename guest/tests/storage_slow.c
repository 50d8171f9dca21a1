/* storage_slow.c: storage calls that hang or crash, then a normal one.
   GET /x/hang  -> storage_call of a function that never returns: "r=-1" once
                   max_storage_time stops it.
   GET /x/crash -> storage_call of a function that writes to NULL: "r=-1".
   GET /x/count -> a working storage counter: "r=8 count=N". */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

static long count;

static void hang(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	for (;;)
		__asm__ volatile("");
}

static void crash(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	static int *volatile nowhere;
	nowhere[2] = 1;
}

static void counter(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	count++;
	storage_return(&count, sizeof(count));
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	long value = 0, r;
	if (strstr(url, "hang"))
		r = storage_call(hang, NULL, 0, &value, sizeof(value));
	else if (strstr(url, "crash"))
		r = storage_call(crash, NULL, 0, &value, sizeof(value));
	else
		r = storage_call(counter, NULL, 0, &value, sizeof(value));
	char out[64];
	const int len = snprintf(out, sizeof(out), "r=%ld count=%ld", r, value);
	backend_response(200, "text/plain", 10, out, (size_t)len);
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
