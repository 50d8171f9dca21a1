/* hot_pages.c: the per-request reset of pages kept writable ("hot pages",
   crates/edgevm-runtime/src/request_vm.rs), tested by crates/edgevm/tests/all/reset.rs.

   GET /?r=N       reads the first byte of N pages (N <= 4096) of a 16 MiB block
                   that nothing ever writes: 500 if one is not zero.
   GET /?w=N&v=V   first checks that every page of a 64-page static array still
                   holds what the frozen image holds (page i: byte i at its start and
                   end, zeros elsewhere checked at a few offsets) and answers 500
                   "leak at page P" if not; then writes V over the first N pages
                   (V = the image's value: the page comes back unchanged) and
                   answers 200 "ok". */
#include "kvm_api.h"
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGES 64
#define PAGE 4096

static unsigned char pages[PAGES][PAGE] __attribute__((aligned(PAGE)));
/* 16 MiB from malloc (an mmap of memory nobody has written; a static array would not do:
   the loader zeroes .bss). */
static unsigned char (*untouched)[PAGE];

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	const char *ws = query_param(url, "w"), *vs = query_param(url, "v");
	const long n = ws != NULL ? atol(ws) : 0;
	const long v = vs != NULL ? atol(vs) : 0;
	const char *rs = query_param(url, "r");
	for (long i = 0, r = rs != NULL ? atol(rs) : 0; i < r && i < 4096; i++)
		if (((const volatile unsigned char *)untouched[i])[0] != 0)
			backend_response_str(500, "text/plain", "untouched memory is not zero");
	char msg[64];
	for (int i = 0; i < PAGES; i++) {
		const volatile unsigned char *p = pages[i];
		if (p[0] != (unsigned char)i || p[PAGE - 1] != (unsigned char)i ||
		    p[1] != 0 || p[PAGE / 2] != 0 || p[PAGE - 2] != 0) {
			snprintf(msg, sizeof(msg), "leak at page %d", i);
			backend_response_str(500, "text/plain", msg);
		}
	}
	for (long i = 0; i < n && i < PAGES; i++) {
		volatile unsigned char *p = pages[i];
		if (v == -1) {
			/* Rewrite the image's own values: the page comes back unchanged. */
			p[0] = (unsigned char)i;
			p[PAGE - 1] = (unsigned char)i;
		} else {
			p[0] = (unsigned char)v;
			p[PAGE / 2] = (unsigned char)v;
			p[PAGE - 1] = (unsigned char)v;
		}
	}
	backend_response_str(200, "text/plain", "ok");
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	for (int i = 0; i < PAGES; i++) {
		pages[i][0] = (unsigned char)i;
		pages[i][PAGE - 1] = (unsigned char)i;
	}
	untouched = malloc(4096 * PAGE);
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
