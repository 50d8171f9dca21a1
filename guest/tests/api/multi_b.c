#include "kvm_api.h"
#include <stdio.h>

static long on_stream(const char *url, const char *arg, const char *ctype,
	const uint8_t *data, size_t len, size_t off)
{
	(void)url; (void)arg; (void)ctype; (void)data; (void)off;
	return (long)len;
}
static void on_post(const char *url, const char *arg, const char *ctype,
	const uint8_t *data, size_t len)
{
	(void)url; (void)arg;
	backend_response(200, ctype, __builtin_strlen(ctype), data, len);
}
static void on_request(const struct kvm_request *req)
{
	if (IS_WARMUP_REQUEST(req))
		sys_log("warmup", 6);
	for (unsigned i = 0; i < req->num_headers; i++)
		sys_log(req->headers[i].field, req->headers[i].field_len);
	backend_response(200, "text/plain", 10, req->url, req->url_len);
}
static void on_error(const char *url, const char *arg, const char *exc)
{
	(void)url; (void)arg;
	backend_response_str(500, "text/plain", exc);
}
static void on_live_update(void) { storage_return_nothing(); }
static void on_live_restore(size_t len) { (void)len; storage_return(NULL, 0); }
static void on_pause(int fd) { (void)fd; }
static void storage_fn(size_t n, struct virtbuffer bufs[], size_t res)
{
	(void)bufs; (void)res;
	if (n == 0)
		storage_noreturn(NULL, 0);
	storage_return(bufs[0].data, bufs[0].len);
}
static void task(void *data, size_t len) { (void)data; (void)len; }
static struct streaming_content stream_cb(void *arg, size_t max, size_t written, size_t total)
{
	(void)written; (void)total;
	struct streaming_content c = { arg, max };
	return c;
}
static void mp(void *arg) { (void)arg; }
static void mpa(int cpu, void *array, size_t sz) { (void)cpu; (void)array; (void)sz; }

void *multi_b_shm(void)
{
	struct { int a; double b; } s;
	void *p = SHM_ALLOC(s);
	(void)SHM_ALLOC_BYTES(100);
	(void)shared_memory_area();
	return p;
}

void multi_b_register(void)
{
	set_backend_post(on_post);
	set_backend_stream_post(on_stream);
	set_backend_request(on_request);
	set_on_error(on_error);
	set_on_live_update(on_live_update);
	set_on_live_restore(on_live_restore);
	set_socket_prepare_for_pause(on_pause);
	STORAGE_ALLOW(storage_fn);
	char out[8];
	(void)storage_call(storage_fn, "x", 1, out, sizeof(out));
	struct virtbuffer v[2] = { { "a", 1 }, { "b", 1 } };
	(void)storage_callv(storage_fn, 2, v, out, sizeof(out));
	long t = storage_task(task, "x", 1);
	t = schedule_storage_task(task, NULL, 0, 1.0f, 2.0f);
	stop_storage_task(t);
	multiprocess(2, mp, NULL);
	int arr[4];
	multiprocess_array(4, mpa, arr, sizeof(arr[0]));
	static char stacks[2][4096];
	multiprocess_clone(2, stacks, sizeof(stacks[0]));
	multiprocess_wait();
	sys_breakpoint();
	void *ptr = TRUST_ME("const");
	(void)ptr;
	if (sys_is_debug() == 42)
		begin_streaming_response(200, "text/plain", 10, 5, stream_cb, "hello");
	struct kvm_request req;
	wait_for_requests_paused(&req);
	struct backend_request *old = &req; /* older name still works */
	(void)old;
}
