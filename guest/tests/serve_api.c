/* serve_api.c: request-handler behaviours for the `edgevm serve` tests.
   The action is the second path segment: /<program>/<action>?<query>.

     ok          200 "ok"
     cpl         200 "cpl=N": the privilege level the handler runs at (3)
     url         200 with the URL the handler got
     arg         200 with the arg the handler got
     status?n=N  backend_response(N, ...)
     sleep?ms=N  nanosleep N ms, then 200 "slept N"
     headers     200, body = the X-Test request header (http_find on REQ);
                 sets X-Multi twice (http_append), X-Set twice (http_set)
     cache       set_cacheable(true, 60 s, 10 s, 0) and 200
     loop        loops forever
     crash       writes to NULL
     exit        exit(3)
     noresp      returns without a response
     membomb     writes 32 MiB of a static (bss) array
     mallocbomb  malloc + memset 48 MiB (507 if malloc fails)
     badbody?p=X backend_response with body pointer X (hex), length 16
     hugelen     backend_response with a valid body pointer and length 2^40
     badappend   http_append with a bad pointer, then 200
     badfind     http_find into a bad output buffer, then 200
     badheader   http_append "NoColonHere" (no ": "), then 200
     movegs      arch_prctl(ARCH_SET_GS, 0x12340000), then 200 "gs moved"
     bases       200 "fs=X gs=X": the FS and GS bases (arch_prctl ARCH_GET_FS/GS)

   Environment: ON_ERROR=1 registers an on_error handler that answers 503
   "custom error: <exception>". */
#include "kvm_api.h"
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

static unsigned char bomb[32u << 20];

static void on_get(const char *url, const char *arg)
{
	char action[64];
	action_of(url, action, sizeof(action));
	char out[8192];

	if (strcmp(action, "ok") == 0) {
		respond(200, "ok");
	} else if (strcmp(action, "cpl") == 0) {
		unsigned short cs;
		__asm__ volatile("mov %%cs, %0" : "=r"(cs));
		snprintf(out, sizeof(out), "cpl=%u", cs & 3u);
		respond(200, out);
	} else if (strcmp(action, "url") == 0) {
		respond(200, url);
	} else if (strcmp(action, "arg") == 0) {
		respond(200, arg);
	} else if (strcmp(action, "status") == 0) {
		const char *n = query_param(url, "n");
		snprintf(out, sizeof(out), "status %s", n ? n : "?");
		respond(n ? atoi(n) : 200, out);
	} else if (strcmp(action, "sleep") == 0) {
		const char *ms = query_param(url, "ms");
		const long v = ms ? atol(ms) : 100;
		struct timespec ts = { v / 1000, (v % 1000) * 1000000L };
		nanosleep(&ts, NULL);
		snprintf(out, sizeof(out), "slept %ld", v);
		respond(200, out);
	} else if (strcmp(action, "headers") == 0) {
		char field[4096];
		const unsigned len = http_find_str(REQ, "X-Test", field, sizeof(field));
		http_append_str(RESP, "X-Multi: 1");
		http_append_str(RESP, "X-Multi: 2");
		http_set_str(RESP, "X-Set: first");
		http_set_str(RESP, "X-Set: second");
		snprintf(out, sizeof(out), "found=%u field=[%.*s]", len, (int)len, field);
		respond(200, out);
	} else if (strcmp(action, "cache") == 0) {
		set_cacheable(true, 60.0f, 10.0f, 0.0f);
		respond(200, "cacheable");
	} else if (strcmp(action, "loop") == 0) {
		for (volatile unsigned long i = 0;; i++)
			;
	} else if (strcmp(action, "crash") == 0) {
		*(volatile int *)0 = 1;
		respond(200, "FAIL still alive");
	} else if (strcmp(action, "exit") == 0) {
		exit(3);
	} else if (strcmp(action, "noresp") == 0) {
		return;
	} else if (strcmp(action, "membomb") == 0) {
		for (size_t i = 0; i < sizeof(bomb); i += 4096)
			bomb[i] = 1;
		snprintf(out, sizeof(out), "FAIL membomb survived (%u)", bomb[4096]);
		respond(200, out);
	} else if (strcmp(action, "mallocbomb") == 0) {
		const size_t n = 48u << 20;
		unsigned char *p = malloc(n);
		if (p == NULL) {
			respond(507, "membomb: malloc failed");
			return;
		}
		memset(p, 0x5A, n);
		snprintf(out, sizeof(out), "FAIL membomb survived (%u)", p[n - 1]);
		respond(200, out);
	} else if (strcmp(action, "badbody") == 0) {
		const char *p = query_param(url, "p");
		const uintptr_t addr = p ? (uintptr_t)strtoull(p, NULL, 16) : 0x10;
		sys_backend_response(200, "text/plain", 10, (const void *)addr, 16, NULL);
		respond(200, "FAIL badbody returned");
	} else if (strcmp(action, "hugelen") == 0) {
		static const char small[16] = "0123456789abcde";
		sys_backend_response(200, "text/plain", 10, small, (size_t)1 << 40, NULL);
		respond(200, "FAIL hugelen returned");
	} else if (strcmp(action, "badappend") == 0) {
		const long r = sys_http_append(RESP, (const char *)(uintptr_t)0xdeadbeef000ull, 16);
		snprintf(out, sizeof(out), "FAIL badappend returned %ld", r);
		respond(200, out);
	} else if (strcmp(action, "badfind") == 0) {
		const unsigned r = sys_http_find(REQ, "Host", 4,
			(char *)(uintptr_t)0xdeadbeef000ull, 100);
		snprintf(out, sizeof(out), "FAIL badfind returned %u", r);
		respond(200, out);
	} else if (strcmp(action, "vcpu") == 0) {
		snprintf(out, sizeof(out), "vcpuid=%d reqid=%d", vcpuid(), vcpureqid());
		respond(200, out);
	} else if (strcmp(action, "flood") == 0) {
		/* 1 MiB of output in one request: the server prints at most its budget. */
		static char line[1024];
		memset(line, 'x', sizeof(line) - 2);
		line[sizeof(line) - 2] = '\n';
		for (int i = 0; i < 1024; i++)
			fputs(line, stdout);
		fflush(stdout);
		snprintf(out, sizeof(out), "flooded");
		respond(200, out);
	} else if (strcmp(action, "movegs") == 0) {
		syscall(SYS_arch_prctl, 0x1001 /* ARCH_SET_GS */, 0x12340000UL);
		respond(200, "gs moved");
	} else if (strcmp(action, "bases") == 0) {
		unsigned long fs = 0, gs = 0;
		syscall(SYS_arch_prctl, 0x1003 /* ARCH_GET_FS */, &fs);
		syscall(SYS_arch_prctl, 0x1004 /* ARCH_GET_GS */, &gs);
		snprintf(out, sizeof(out), "fs=%lx gs=%lx", fs, gs);
		respond(200, out);
	} else if (strcmp(action, "badheader") == 0) {
		const long r = sys_http_append(RESP, "NoColonHere", 11);
		snprintf(out, sizeof(out), "FAIL badheader returned %ld", r);
		respond(200, out);
	} else {
		snprintf(out, sizeof(out), "unknown action [%s]", action);
		respond(400, out);
	}
}

static void on_error(const char *url, const char *arg, const char *exception)
{
	(void)url;
	(void)arg;
	char out[4096];
	snprintf(out, sizeof(out), "custom error: %s", exception ? exception : "(null)");
	respond(503, out);
}

int main(void)
{
	set_backend_get(on_get);
	if (getenv("ON_ERROR") != NULL)
		set_on_error(on_error);
	wait_for_requests();
	return 0;
}
