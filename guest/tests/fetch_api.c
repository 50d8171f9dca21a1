/* sys_fetch probes for tests/all/fetch.rs. The request URL is /f/<mode>?<target>: <target>
 * (the rest of the query string, verbatim) is the URL to fetch. Every answer is text the
 * test compares. */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char out[1 << 16];

static const char *target_of(const char *url)
{
	const char *q = strchr(url, '?');
	return q ? q + 1 : "";
}

static void answer_op(const char *what, long r, const struct curl_op *op)
{
	int n;
	if (r != 0) {
		n = snprintf(out, sizeof(out), "%s r=%ld", what, r);
	} else {
		n = snprintf(out, sizeof(out), "%s r=0 status=%u ct=%.*s len=%u body=%.*s", what,
			op->status, (int)op->ctlen, op->ctype, op->content_length,
			(int)(op->content_length > 4000 ? 0 : op->content_length),
			op->content ? (const char *)op->content : "");
	}
	backend_response(200, "text/plain", 10, out, (size_t)n);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	const char *t = target_of(url);
	struct curl_op op;
	memset(&op, 0, sizeof(op));
	long r;

	if (strncmp(url, "/f/get?", 7) == 0) {
		r = sys_fetch(t, strlen(t), &op, NULL, NULL);
		answer_op("get", r, &op);
	} else if (strncmp(url, "/f/headers?", 11) == 0) {
		r = sys_fetch(t, strlen(t), &op, NULL, NULL);
		if (r != 0)
			answer_op("headers", r, &op);
		/* The host allocated the headers: "Name: value\r\n"..., NUL-terminated. */
		const char *h = strstr(op.headers, "x-origin: ");
		int n = snprintf(out, sizeof(out), "x-origin=%.3s nul=%d", h ? h + 10 : "-",
			op.headers[op.headers_length] == 0);
		backend_response(200, "text/plain", 10, out, (size_t)n);
	} else if (strncmp(url, "/f/nohdrs?", 10) == 0) {
		/* headers_length != 0: the host leaves the headers alone. */
		op.headers_length = 1;
		r = sys_fetch(t, strlen(t), &op, NULL, NULL);
		int n = snprintf(out, sizeof(out), "r=%ld headers=%p len=%u", r, (void *)op.headers,
			op.headers_length);
		backend_response(200, "text/plain", 10, out, (size_t)n);
	} else if (strncmp(url, "/f/post?", 8) == 0 || strncmp(url, "/f/put?", 7) == 0) {
		static const char body[] = "hello-post";
		struct curl_fields f;
		memset(&f, 0, sizeof(f));
		CURL_SETFIELD(f, 0, "Content-Type: text/x-test");
		CURL_SETFIELD(f, 5, "X-Test: field five");
		struct curl_options o;
		memset(&o, 0, sizeof(o));
		if (url[3] == 'p' && url[4] == 'u')
			o.method = "PUT";
		op.post_buffer = body;
		op.post_buflen = sizeof(body) - 1;
		r = sys_fetch(t, strlen(t), &op, &f, &o);
		answer_op("post", r, &op);
	} else if (strncmp(url, "/f/buf?", 7) == 0) {
		/* The program's own buffer of 64 bytes. */
		static char buf[64];
		op.content = buf;
		op.content_length = sizeof(buf);
		r = sys_fetch(t, strlen(t), &op, NULL, NULL);
		int n = r ? snprintf(out, sizeof(out), "buf r=%ld", r)
			  : snprintf(out, sizeof(out), "buf r=0 same=%d len=%u body=%.*s",
				  op.content == (void *)buf, op.content_length,
				  (int)op.content_length, buf);
		backend_response(200, "text/plain", 10, out, (size_t)n);
	} else if (strncmp(url, "/f/follow?", 10) == 0) {
		struct curl_options o;
		memset(&o, 0, sizeof(o));
		o.follow_location = 1;
		r = sys_fetch(t, strlen(t), &op, NULL, &o);
		answer_op("follow", r, &op);
	} else if (strncmp(url, "/f/insecure?", 12) == 0) {
		/* dont_verify_host: an HTTPS origin with a certificate nobody signed. */
		struct curl_options o;
		memset(&o, 0, sizeof(o));
		o.dont_verify_host = 1;
		r = sys_fetch(t, strlen(t), &op, NULL, &o);
		answer_op("insecure", r, &op);
	} else if (strncmp(url, "/f/dummy?", 9) == 0) {
		struct curl_options o;
		memset(&o, 0, sizeof(o));
		o.dummy_fetch = 1;
		r = sys_fetch(t, strlen(t), &op, NULL, &o);
		int n = snprintf(out, sizeof(out), "dummy r=%ld status=%u len=%u content=%p", r,
			op.status, op.content_length, op.content);
		backend_response(200, "text/plain", 10, out, (size_t)n);
	} else if (strncmp(url, "/f/bad?", 7) == 0) {
		/* Hostile arguments: each must fail with -1 and leave the program running. */
		struct curl_fields f;
		struct curl_options o;
		long rs[9];
		rs[0] = sys_fetch((const char *)0x10, 20, &op, NULL, NULL);
		rs[1] = sys_fetch(t, strlen(t), (struct curl_op *)0x1000, NULL, NULL);
		rs[2] = sys_fetch(t, strlen(t), NULL, NULL, NULL);
		memset(&f, 0, sizeof(f));
		f.ptr[3] = (const char *)0x20;
		f.len[3] = 10;
		rs[3] = sys_fetch(t, strlen(t), &op, &f, NULL);
		memset(&op, 0, sizeof(op));
		op.post_buffer = (const void *)0x30;
		op.post_buflen = 100;
		rs[4] = sys_fetch(t, strlen(t), &op, NULL, NULL);
		memset(&op, 0, sizeof(op));
		memset(&f, 0, sizeof(f));
		CURL_SETFIELD(f, 0, "X-Evil: a\r\nInjected: b");
		rs[5] = sys_fetch(t, strlen(t), &op, &f, NULL);
		memset(&o, 0, sizeof(o));
		o.interface = "eth0";
		rs[6] = sys_fetch(t, strlen(t), &op, NULL, &o);
		rs[7] = sys_fetch("file:///etc/passwd", 18, &op, NULL, NULL);
		memset(&op, 0, sizeof(op));
		op.content = (void *)0x40;
		op.content_length = 100;
		rs[8] = sys_fetch(t, strlen(t), &op, NULL, NULL);
		int n = snprintf(out, sizeof(out), "bad %ld %ld %ld %ld %ld %ld %ld %ld %ld", rs[0],
			rs[1], rs[2], rs[3], rs[4], rs[5], rs[6], rs[7], rs[8]);
		backend_response(200, "text/plain", 10, out, (size_t)n);
	} else if (strncmp(url, "/f/recurse", 10) == 0) {
		/* A program fetching itself: bounded by the self-request depth limit. */
		r = sys_fetch("/f/recurse", 10, &op, NULL, NULL);
		int n = r ? snprintf(out, sizeof(out), "bottom")
			  : snprintf(out, sizeof(out), "(%.*s)", (int)op.content_length,
				  (const char *)op.content);
		backend_response(200, "text/plain", 10, out, (size_t)n);
	} else if (strcmp(url, "/f/plain") == 0) {
		http_appendf(RESP, "X-Depth-Test: yes");
		backend_response_str(200, "text/plain", "plain answer");
	} else {
		backend_response_str(404, "text/plain", "unknown mode");
	}
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
}
