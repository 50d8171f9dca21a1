/* call_semantics.c: every header call on the same inputs, built twice (guest/build.sh):
     call_semantics      edgevm's kvm_api.h (header calls served inside the guest)
     call_semantics_ref  -DREF_ABI: reference-style stubs, every call a hypercall
   tests/all/call_semantics.rs checks that both answer byte for byte the same, and the
   values the reference gives (field indexes, copies without NUL, BEREQ/BERESP = 4/5). */
#ifdef REF_ABI
#define KVM_API_ALREADY_DEFINED
#endif
#include "kvm_api.h"
#include "test_util.h"
#include <stdio.h>
#include <string.h>

#ifdef REF_ABI
#include "ref_stubs.h"
#else
EDGEVM_HYPERCALL_STUB(sys_unknown_call, 0x10004);
#endif
extern long sys_unknown_call(void);

static char out[16384];
static size_t pos;
#define P(...) (pos += (size_t)snprintf(out + pos, sizeof(out) - pos, __VA_ARGS__))

/* "n:" then the bytes at b (up to n, `#` for an untouched byte) */
static void show(const char *what, long n, const char *b, size_t cap)
{
	P("%s=%ld:", what, n);
	for (size_t i = 0; i < cap; i++)
		P("%c", b[i] == 0 ? '0' : b[i]);
	P(" ");
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32];
	action_of(url, action, sizeof(action));
	pos = 0;
	if (strcmp(action, "where2") == 0) {
		sys_http_append(2, "X-A: b", 6);
		respond(200, "FAIL where 2 accepted");
		return;
	}
	if (strcmp(action, "badkey") == 0) {
		char b[8];
		sys_http_find(REQ, "X Y", 3, b, sizeof(b));
		respond(200, "FAIL bad key accepted");
		return;
	}
	if (strcmp(action, "badfield") == 0) {
		sys_http_set(RESP, "X-A:b", 5);
		respond(200, "FAIL bad field accepted");
		return;
	}
	if (strcmp(action, "badout") == 0) {
		sys_http_find(REQ, "X-Test", 6, (char *)16, 64);
		respond(200, "FAIL bad output buffer accepted");
		return;
	}
	if (strcmp(action, "hugelen") == 0) {
		sys_http_append(RESP, "X-A: b", (size_t)1 << 40);
		respond(200, "FAIL huge length accepted");
		return;
	}
	/* Appends and sets return field indexes (> 0), on both header sets, with REQ/RESP and
	   the reference's BEREQ/BERESP numbers. */
	P("append=%ld ", sys_http_append(RESP, "X-One: 1", 8));
	P("append=%ld ", sys_http_append(5, "X-Two: 2", 8));
	P("set=%ld ", sys_http_set(RESP, "X-One: uno", 10));
	P("unset=%ld ", sys_http_set(1, "X-Two", 5));
	P("unset-missing=%ld ", sys_http_set(RESP, "X-None", 6));
	P("set-empty=%ld ", sys_http_set(RESP, "", 0));
	P("req-append=%ld ", sys_http_append(4, "X-Added: yes", 12));
	/* Find: the whole field, copied when it fits (no NUL added), 0 when it does not. */
	char b[24];
	const char *key = "X-Test";
	memset(b, '#', sizeof(b));
	show("find-null", (long)sys_http_find(REQ, key, 6, NULL, 0), b, 0);
	memset(b, '#', sizeof(b));
	show("find-exact", (long)sys_http_find(REQ, key, 6, b, 14), b, 16);
	memset(b, '#', sizeof(b));
	show("find-short", (long)sys_http_find(0, key, 6, b, 13), b, 16);
	memset(b, '#', sizeof(b));
	show("find-bereq", (long)sys_http_find(4, "x-added", 7, b, sizeof(b)), b, 14);
	memset(b, '#', sizeof(b));
	show("find-resp", (long)sys_http_find(5, "X-ONE", 5, b, sizeof(b)), b, 12);
	show("find-missing", (long)sys_http_find(RESP, "X-Two", 5, b, sizeof(b)), b, 0);
	/* Method: copied when it fits exactly, no NUL; 0 when too small; its length for NULL. */
	memset(b, '#', sizeof(b));
	show("method-exact", (long)sys_http_method(b, 3), b, 4);
	memset(b, '#', sizeof(b));
	show("method-short", (long)sys_http_method(b, 2), b, 4);
	show("method-null", (long)sys_http_method(NULL, 0), b, 0);
	/* A full response header set loses the field: -1. */
	long last = 0;
	int added = 0;
	char f[32];
	for (int i = 0; i < 200; i++) {
		const int n = snprintf(f, sizeof(f), "X-Many-%d: %d", i, i);
		last = sys_http_append(RESP, f, (size_t)n);
		if (last < 0)
			break;
		added++;
	}
	P("full-after=%d full=%ld ", added, last);
	P("set-full=%ld ", sys_http_set(RESP, "X-More: 1", 9));
	P("cacheable=%ld ", set_cacheable(true, 10.0f, 1.0f, 0.0f));
	P("request=%ld unknown=%ld", sys_request("/", 1, NULL, NULL, NULL), sys_unknown_call());
	/* The response headers made so far are the response's. */
	backend_response(200, "text/plain", 10, out, pos);
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
