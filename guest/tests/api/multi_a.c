/* api/multi_a.c + multi_b.c: two translation units including kvm_api.h
   must link into one program (the stubs are weak/COMDAT). Also references
   every API entry point so the whole header is compile-checked. */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

extern void multi_b_register(void);
extern void *multi_b_shm(void);

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char buf[256];
	if (http_find_str(REQ, "Host", buf, sizeof(buf)) == 0)
		http_appendf(RESP, "X-No-Host: %s", url);
	http_set_str(RESP, "X-A: 1");
	http_setf(BERESP, "X-B: %d", 2);
	http_unset_str(RESP, "X-A");
	http_unset(RESP, "X-B", 3);
	http_append_str(BERESP, "X-C: 3");
	(void)http_find_strlen(REQ, "Host");
	const char *m = http_alloc_method();
	const char *h = http_alloc_find(REQ, "Host");
	(void)m; (void)h;
	set_cacheable(true, 10.0f, 5.0f, 1.0f);
	int rgx = sys_regex_compile("a+", 2);
	(void)sys_regex_match(rgx, "aaa", 3);
	(void)sys_regex_subst(rgx, "aaa", "b", buf, sizeof(buf), REGEX_SUBST_ALL);
	(void)sys_regex_copyto(rgx, REQ, RESP);
	sys_regex_free(rgx);
	struct meminfo mi;
	get_meminfo(&mi);
	vlogf("meminfo %llu", (unsigned long long)mi.max_memory);
	struct curl_op op;
	memset(&op, 0, sizeof(op));
	struct curl_fields fields;
	memset(&fields, 0, sizeof(fields));
	CURL_SETFIELD(fields, 0, "X-Fetch: 1");
	struct curl_options opts;
	memset(&opts, 0, sizeof(opts));
	(void)sys_fetch("/x", 2, &op, &fields, &opts);
	(void)sys_request("/x", 2, &op, NULL, NULL);
	static const struct ResponseHeader hdrs[] = { { "X-Extra: 1", 10 } };
	struct BackendResponseExtra extra;
	memset(&extra, 0, sizeof(extra));
	extra.headers = hdrs;
	extra.num_headers = 1;
	extra.cached = true;
	extra.ttl = 1.0f;
	backend_response_extra(200, "text/plain", 10, "ok", 2, &extra);
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (IS_LINUX_MAIN()) {
		printf("api_multi: linked OK (%p %p %p)\n", (void *)&register_func,
			(void *)&multi_b_register, (void *)&sys_log);
		return 0;
	}
	set_backend_get(on_get);
	multi_b_register();
	int *p = SHM_ALLOC_TYPE(*p);
	void *q = multi_b_shm();
	printf("shm %p %p vcpu=%d req=%d debug=%d storage=%d/%d req=%d\n",
		(void *)p, q, vcpuid(), vcpureqid(), sys_is_debug(), sys_is_storage(),
		IS_STORAGE(), IS_REQUEST());
	(void)IS_DEBUG();
	(void)sys_make_ephemeral(1);
	wait_for_requests();
}
