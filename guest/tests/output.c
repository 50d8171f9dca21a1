/* output.c: stdio output of a program (issue 19, item 1), built three ways
   (guest/build.sh): output (glibc, kvm_api.h), output_musl (musl, kvm_api.h)
   and output_ref (glibc, -DREF_ABI: reference-style stubs, none of the
   header's flushing -- what a binary built against the reference header
   does). No program here calls fflush() or setvbuf().

   main() prints "boot line" and, except in output_ref, the partial line
   "boot partial"; with the argument "crash" it then dereferences NULL (what
   was printed must be visible anyway). Every GET prints "request line" and,
   except in output_ref, the partial line "request partial", then answers
   "ok". */
#ifdef REF_ABI
#define KVM_API_ALREADY_DEFINED
#endif
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

#ifdef REF_ABI
#undef wait_for_requests
#define STUB(name, num) \
	__asm__(".global " #name "\n" #name ":\n\tmov $" #num ", %eax\n\tout %eax, $0\n\tret\n")
STUB(register_func, 0x10000);
STUB(wait_for_requests, 0x10001);
STUB(sys_backend_response, 0x10010);
#define RESPOND(s) sys_backend_response(200, "text/plain", 10, s, strlen(s), NULL)
#else
#define RESPOND(s) backend_response_str(200, "text/plain", s)
#endif

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	printf("request line\n");
#ifndef REF_ABI
	printf("request partial");
#endif
	RESPOND("ok\n");
}

int main(int argc, char **argv)
{
	printf("boot line\n");
#ifndef REF_ABI
	printf("boot partial");
#endif
	if (argc > 1 && strcmp(argv[1], "crash") == 0) {
		volatile int *p = NULL;
		return *p;
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
