/* bench_touch.c: request-cycle benchmark guest (crates/edgevm-runtime/benches/request.rs).

   GET /?n=N   writes one byte to each of the first N pages of a 16 MiB static
               array (N <= 4096; the image holds zeros), then answers "ok" with backend_response:
               one VM exit per request.
   GET /?k=K   makes K sys_is_debug() hypercalls (one VM exit each), then
               answers: (time(K) - time(0)) / K is the raw exit round trip
               seen from inside a request VM. */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGES 4096
#define PAGE 4096

/* Page-aligned, so that N pages written are N pages dirtied and page 0 is
   not shared with other data. */
static char pages[PAGES][PAGE] __attribute__((aligned(PAGE)));

static long query(const char *url, const char *key)
{
	const char *q = strchr(url, '?');
	const size_t len = strlen(key);
	while (q != NULL) {
		q++;
		if (strncmp(q, key, len) == 0 && q[len] == '=')
			return atol(q + len + 1);
		q = strchr(q, '&');
	}
	return 0;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	long n = query(url, "n");
	const long k = query(url, "k");
	if (n > PAGES)
		n = PAGES;
	for (long i = 0; i < n; i++)
		((volatile char *)pages[i])[0] = 1;
	for (long i = 0; i < k; i++)
		(void)sys_is_debug();
	backend_response_str(200, "text/plain", "ok");
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (IS_LINUX_MAIN()) {
		puts("bench_touch: run me inside edgevm");
		return 0;
	}
	set_backend_get(on_get);
	wait_for_requests();
}
