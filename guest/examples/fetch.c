/* fetch.c: a small proxy. GET /fetch?URL fetches URL from the server with
   sys_fetch() and answers with what came back: the origin's status, content
   type and body, plus X-Fetched-Status. A path-only URL ("/hello") is a
   self-request to the server itself. Which addresses may be fetched is the
   server's network policy ("allow_net" in the configuration). */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	const char *q = strchr(url, '?');
	if (q == NULL || q[1] == 0) {
		backend_response_str(400, "text/plain", "usage: /fetch?http://host/path\n");
	}
	const char *target = q + 1;

	struct curl_op op;
	memset(&op, 0, sizeof(op));   /* content NULL: the host allocates it */
	struct curl_fields fields;
	memset(&fields, 0, sizeof(fields));
	CURL_SETFIELD(fields, 0, "Accept: */*");
	CURL_SETFIELD(fields, 1, "X-Fetched-By: edgevm-example");
	struct curl_options opts;
	memset(&opts, 0, sizeof(opts));
	opts.follow_location = 1;

	if (sys_fetch(target, strlen(target), &op, &fields, &opts) != 0) {
		/* The server log says why (policy, timeout, ...). */
		backend_response_str(502, "text/plain", "fetch failed\n");
	}
	http_appendf(RESP, "X-Fetched-Status: %u", op.status);
	const char *ctype = op.ctlen ? op.ctype : "application/octet-stream";
	backend_response(op.status >= 200 && op.status <= 599 ? (int16_t)op.status : 502,
		ctype, strlen(ctype), op.content, op.content_length);
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
}
