/* echo.c: answers a POST with its own body and content type. GET requests
   get a short usage text. */
#include "kvm_api.h"
#include <stdio.h>

static void on_post(const char *url, const char *arg, const char *ctype,
	const uint8_t *data, size_t len)
{
	(void)url;
	(void)arg;
	if (ctype == NULL || ctype[0] == 0)
		ctype = "application/octet-stream";
	http_setf(RESP, "X-Echo-Length: %zu", len);
	backend_response(200, ctype, __builtin_strlen(ctype), data, len);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char buffer[512];
	const int len = snprintf(buffer, sizeof(buffer),
		"POST a body to %s and it comes back.\n", url);
	backend_response(200, "text/plain", 10, buffer,
		len < (int)sizeof(buffer) ? (size_t)len : sizeof(buffer) - 1);
}

int main(void)
{
	set_backend_get(on_get);
	set_backend_post(on_post);
	wait_for_requests();
}
