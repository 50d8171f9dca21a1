/* The request half of a two-binary program: its storage program (remote_storage.c) is linked
   at 0x40200000, and this one is linked with --just-symbols of it, so remote_visit() and
   remote_total() are ordinary calls of functions that run in the storage VM, one at a time.

     build:  gcc -static -O2 -I guest -Wl,-Ttext-segment=0x40200000 remote_storage.c -o prog_storage
             objcopy -w --extract-symbol --strip-all --keep-symbol='remote_*' prog_storage prog.syms
             gcc -static -O2 -I guest remote.c -Wl,--just-symbols=prog.syms -o prog
     config: { "prog": { "filename": "/path/to/prog", "storage": true } }
             (the storage program is found next to it as prog_storage)

   GET /prog/3 -> "page 3: 1 visits, 1 in all" */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern long remote_visit(long page);
extern long remote_total(void);

static void on_get(const char *url, const char *arg)
{
	const char *last = strrchr(url, '/');
	long page = last != NULL ? strtol(last + 1, NULL, 10) : 0;
	long n = remote_visit(page);
	if (n < 0) {
		backend_response_str(404, "text/plain", "no such page\n");
		return;
	}
	char out[96];
	snprintf(out, sizeof(out), "page %ld: %ld visits, %ld in all\n", page, n, remote_total());
	backend_response_str(200, "text/plain", out);
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
