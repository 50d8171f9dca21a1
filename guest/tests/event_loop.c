/* event_loop.c: an event-loop program (wait_for_requests_paused), tests/all/event_loop.rs.
   Built twice (guest/build.sh): event_loop against edgevm's kvm_api.h, event_loop_ref with
   -DREF_ABI: reference-style stubs for every call, as a binary built against the reference
   header. The loop keeps state in main()'s frame and in a global: ephemeral VMs start every
   request from the paused point (served=1 each time), non-ephemeral ones count on. */
#ifdef REF_ABI
#define KVM_API_ALREADY_DEFINED
#endif
#include "kvm_api.h"
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef REF_ABI
#define STUB(name, num) \
	__asm__(".global " #name "\n" #name ":\n\tmov $" #num ", %eax\n\tout %eax, $0\n\tret\n")
STUB(register_func, 0x10000);
STUB(wait_for_requests_paused, 0x10002);
STUB(sys_backend_response, 0x10010);
STUB(sys_http_append, 0x10020);
STUB(sys_http_set, 0x10021);
STUB(sys_http_find, 0x10022);
STUB(sys_http_method, 0x10023);
#undef wait_for_requests_paused
#endif

static int served_global;
static char boot_note[32];

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	snprintf(boot_note, sizeof(boot_note), "booted");
	int served_local = 0;
	/* Callee-saved registers must survive the pause: keep a value live in one. */
	register unsigned long canary __asm__("rbx") = 0x5EED5EED5EEDull;
	__asm__ volatile("" : "+r"(canary));
	struct kvm_request req;
	for (;;) {
		memset(&req, 0xAA, sizeof(req));
		wait_for_requests_paused(&req);
		__asm__ volatile("" : "+r"(canary));
		served_local++;
		served_global++;
		char action[32];
		action_of(req.url, action, sizeof(action));
		if (strcmp(action, "crash") == 0) {
			volatile int *volatile bad = (volatile int *)8;
			*bad = 1;
		}
		if (strcmp(action, "twice") == 0) {
			respond(200, "first");
			respond(200, "second");
			continue;
		}
		if (strcmp(action, "noresp") == 0)
			continue; /* waits again without answering */
		if (strcmp(action, "exit") == 0)
			exit(3);
		if (strcmp(action, "badreq") == 0) {
			/* The next wait names a pointer the host cannot write. */
			respond(200, "bad next");
			wait_for_requests_paused((struct kvm_request *)8);
			continue;
		}
		char method[8];
		memset(method, '#', sizeof(method));
		const unsigned long mlen = sys_http_method(method, sizeof(method));
		char field[64] = "";
		const unsigned flen = http_find_str(REQ, "X-Test", field, sizeof(field));
		char out[512];
		const int n = snprintf(out, sizeof(out),
			"%s method=%.*s/%.*s url=%.*s arg=%.*s body=%.*s headers=%u x-test=%.*s "
			"local=%d global=%d canary=%d warmup=%d",
			boot_note, (int)req.method_len, req.method, (int)mlen, method,
			(int)req.url_len, req.url, (int)req.arg_len, req.arg,
			(int)req.content_len, req.content ? (const char *)req.content : "",
			req.num_headers, (int)flen, field, served_local, served_global,
			canary == 0x5EED5EED5EEDull, IS_WARMUP_REQUEST(&req));
		http_append_str(RESP, "X-Loop: yes");
		backend_response(200, "text/plain", 10, out, (size_t)n);
	}
}
