/* routes.c: one program behind routes and chains (tests/all/routes.rs), configured under
   several names. GET answers what it got (url, arg); /origin/data answers "origin data",
   /origin/fail 404. POST transforms its body by its arg: "upper" upper-cases it; a JSON arg
   {"width": N} (as a thumbnailer's) answers "width=N body=...". */
#include "kvm_api.h"
#include "test_util.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_get(const char *url, const char *arg)
{
	if (strstr(url, "/origin/fail") != NULL) {
		respond(404, "not here");
		return;
	}
	if (strstr(url, "/origin/data") != NULL) {
		backend_response(200, "text/x-origin", 13, "origin data", 11);
		return;
	}
	char out[512];
	snprintf(out, sizeof(out), "GET url=%s arg=%s", url, arg);
	respond(200, out);
}

static void on_post(const char *url, const char *arg, const char *ctype, const uint8_t *data,
	size_t len)
{
	(void)url;
	static char out[4096];
	if (strcmp(arg, "upper") == 0) {
		size_t n = len < sizeof(out) ? len : sizeof(out);
		for (size_t i = 0; i < n; i++)
			out[i] = (char)toupper(data[i]);
		backend_response(200, "text/x-upper", 12, out, n);
		return;
	}
	const char *w = strstr(arg, "\"width\"");
	if (w == NULL) {
		respond(400, "arg must be JSON with a width");
		return;
	}
	w = strchr(w, ':');
	const long width = w ? strtol(w + 1, NULL, 10) : -1;
	const int n = snprintf(out, sizeof(out), "width=%ld ctype=%s body=%.*s", width, ctype,
		(int)(len < 1024 ? len : 1024), (const char *)data);
	respond(200, n > 0 ? out : "");
}

int main(void)
{
	set_backend_get(on_get);
	set_backend_post(on_post);
	wait_for_requests();
	return 0;
}
