/* ref_stubs.h: what a binary built against the reference's header does for each call — a
   stub `mov $N, %eax; out %eax, $0; ret` (a hypercall, no fast path). Included by the test
   guests built twice (api_compat, call_semantics: -DREF_ABI) to compare both paths. */
#ifndef EDGEVM_REF_STUBS_H
#define EDGEVM_REF_STUBS_H
#define STUB(name, num) \
	__asm__(".global " #name "\n" #name ":\n\tmov $" #num ", %eax\n\tout %eax, $0\n\tret\n")
STUB(register_func, 0x10000);
STUB(wait_for_requests, 0x10001);
STUB(sys_unknown_call, 0x10004);
STUB(sys_set_cacheable, 0x10005);
STUB(sys_backend_response, 0x10010);
STUB(sys_http_append, 0x10020);
STUB(sys_http_set, 0x10021);
STUB(sys_http_find, 0x10022);
STUB(sys_http_method, 0x10023);
STUB(get_meminfo, 0x10A00);
STUB(sys_request, 0x20001);
STUB(sys_log, 0x7F000);
STUB(sys_breakpoint, 0x7F7F7);
STUB(sys_is_debug, 0x7FDEB);
#endif
