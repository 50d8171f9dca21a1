/* api_compat.c: the request-handler API end to end, built two ways (guest/build.sh):
     api_compat      against edgevm's kvm_api.h (header calls served inside the guest)
     api_compat_ref  with -DREF_ABI: its own reference-style stubs (`mov $N,%eax;
                     out %eax,$0; ret` for every call, no fast path) — what a binary built
                     against the reference header does.
   Both must answer identically; only the number of VM exits differs. */
#ifdef REF_ABI
#define KVM_API_ALREADY_DEFINED
#endif
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

#ifdef REF_ABI
#include "ref_stubs.h"
#endif

static void on_request(const struct kvm_request *req)
{
	char method[16] = "";
	sys_http_method(method, sizeof(method));
	char agent[256] = "";
	const unsigned alen = http_find_str(REQ, "X-Agent", agent, sizeof(agent));
	struct meminfo mi;
	memset(&mi, 0, sizeof(mi));
	get_meminfo(&mi);
	sys_log("handling a request", 18);
	sys_breakpoint();
	http_append_str(RESP, "X-One: 1");
	http_appendf(RESP, "X-Two: %d", 2);
	http_set_str(RESP, "X-One: uno");
	http_append_str(RESP, "X-Gone: soon");
	http_unset_str(RESP, "X-Gone");
	set_cacheable(true, 30.0f, 10.0f, 0.0f);
	char out[1024];
	const int n = snprintf(out, sizeof(out),
		"method=%s/%.*s url=%.*s ctype=%.*s body=%zu:%.*s headers=%u agent=[%.*s] "
		"sandboxed=%d request=%d storage=%d warmup=%d maxmem=%llu reqmem=%llu debug=%d",
		method, (int)req->method_len, req->method, (int)req->url_len, req->url,
		(int)req->content_type_len, req->content_type, req->content_len,
		(int)(req->content_len < 16 ? req->content_len : 16), (const char *)req->content,
		req->num_headers, (int)alen, agent,
		IS_SANDBOXED_MAIN(), IS_REQUEST(), IS_STORAGE(), IS_WARMUP_REQUEST(req),
		(unsigned long long)(mi.max_memory >> 20), (unsigned long long)(mi.max_reqmem >> 20),
		sys_is_debug());
	backend_response(200, "text/plain", 10, out, (size_t)n);
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	set_backend_request(on_request);
	wait_for_requests();
	return 0;
}
