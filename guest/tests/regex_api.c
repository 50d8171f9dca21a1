/* regex_api.c: the regex calls (tests/all/regex.rs). main() compiles one pattern before the
   freeze (handle `init`); the action is the second path segment:

     match?s=TEXT   200 "match=R": sys_regex_match(init, TEXT)
     subst?s=TEXT&all=0|1   200 "n=N [RESULT]": sys_regex_subst(init, TEXT, "<\2|\1>")
     small          sys_regex_subst into a 4-byte buffer: 200 "r=R"
     new            compiles a pattern, 200 "handle=H" (the same H every request: a
                    request's handles go at its reset)
     many           compiles until it fails: 200 "ok=N fail=R"
     freeinit       frees `init`: 200 "freed match=R" (the next request has it back)
     bad            hostile arguments: 200 "compile=R match=R handle=R free=R ptr=R subst=R"
     copy           sys_regex_copyto(copy, REQ, RESP): 200 "copied=N" (X-Copy-* headers, any case) */
#include "kvm_api.h"
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int init = -1, copy = -1;

static const char *param(const char *url, const char *key, char *buf, size_t size)
{
	const char *v = query_param(url, key);
	if (!v)
		return "";
	size_t n = strcspn(v, "&");
	if (n >= size)
		n = size - 1;
	memcpy(buf, v, n);
	buf[n] = 0;
	return buf;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[64], text[512], out[1024], dst[512];
	action_of(url, action, sizeof(action));

	if (strcmp(action, "match") == 0) {
		param(url, "s", text, sizeof(text));
		snprintf(out, sizeof(out), "match=%d", sys_regex_match(init, text, strlen(text)));
	} else if (strcmp(action, "subst") == 0) {
		char all[8];
		param(url, "s", text, sizeof(text));
		param(url, "all", all, sizeof(all));
		const long n = sys_regex_subst(init, text, "<\\2|\\1>", dst, sizeof(dst),
			atoi(all) ? REGEX_SUBST_ALL : 0);
		snprintf(out, sizeof(out), "n=%ld [%s]", n, n >= 0 ? dst : "");
	} else if (strcmp(action, "small") == 0) {
		char tiny[4];
		snprintf(out, sizeof(out), "r=%ld",
			sys_regex_subst(init, "ab-cd", "\\0\\0\\0", tiny, sizeof(tiny), 0));
	} else if (strcmp(action, "new") == 0) {
		snprintf(out, sizeof(out), "handle=%d", sys_regex_compile("x+y", 3));
	} else if (strcmp(action, "many") == 0) {
		int ok = 0, r = 0;
		for (int i = 0; i < 100 && (r = sys_regex_compile("z", 1)) >= 0; i++)
			ok++;
		snprintf(out, sizeof(out), "ok=%d fail=%d", ok, r);
	} else if (strcmp(action, "freeinit") == 0) {
		sys_regex_free(init);
		snprintf(out, sizeof(out), "freed match=%d", sys_regex_match(init, "ab-cd", 5));
	} else if (strcmp(action, "bad") == 0) {
		const int compile = sys_regex_compile("(unclosed", 9);
		const int match = sys_regex_match(12345, "x", 1);
		const int handle = sys_regex_match(-1, "x", 1);
		const long fr = hypercall6(EDGEVM_HYPERCALL_REGEX_FREE, 77, 0, 0, 0, 0, 0);
		const int ptr = sys_regex_match(init, (const char *)8, 64);
		const long subst = sys_regex_subst(init, (const char *)0x10, "x", dst,
			sizeof(dst), 0);
		const long huge = hypercall6(EDGEVM_HYPERCALL_REGEX_COMPILE,
			(unsigned long)"a", 1ul << 40, 0, 0, 0, 0);
		snprintf(out, sizeof(out), "compile=%d match=%d handle=%d free=%ld ptr=%d subst=%ld huge=%ld",
			compile, match, handle, fr, ptr, subst, huge);
	} else if (strcmp(action, "copy") == 0) {
		snprintf(out, sizeof(out), "copied=%d", sys_regex_copyto(copy, REQ, RESP));
	} else {
		snprintf(out, sizeof(out), "unknown action %s", action);
	}
	respond(200, out);
}

int main(void)
{
	init = sys_regex_compile("(\\w+)-(\\w+)", 11);
	copy = sys_regex_compile("(?i)^x-copy-", 12);
	if (init < 0 || copy < 0)
		return 1;
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
