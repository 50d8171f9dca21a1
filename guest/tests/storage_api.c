/* storage_api.c: storage_call/storage_callv behaviour, for tests/all/storage.rs.
   The action is the second path segment: /<program>/<action>?<query>.

     info           "req type=.. is_storage=.. allow=.. mxcsr=.. marker=.. | st <the same,
                    from storage>"
     vec?n=N&dst=D  storage_callv with N buffers (buffer i: i+1 bytes of 'A'+i%26) into a
                    D-byte buffer (D=0: dst NULL). Storage checks them and returns their
                    concatenation. "r=<ret> data=<the bytes received>"
     res?dst=D      storage returns the `res` argument it got: "r=<ret> data=res=<res>"
     big?size=S&dst=D
                    storage returns S bytes of a pattern; the body is what arrived in the
                    D-byte buffer, header X-R: <ret>
     retnull?dst=D  storage_return(NULL, 42): "r=<ret>"
     nothing        storage_return_nothing(): "r=<ret>"
     noreturn       the function returns without storage_return: "r=<ret>"
     noresume       storage_noreturn("abc", 3), code after it must never run: "r=3 data=abc"
     cleanup        storage_return("x", 1), then the function goes on (cleanups++)
     counters       "count=.. cleanups=.. after_noreturn=.."
     count          count++ in storage: "r=8 count=N"
     recurse        a storage function calling storage_call: "r=.. data=inner=-1"
     notallowed     calls a function missing from the STORAGE_ALLOW list
     crash          NULL write in storage
     hang           endless loop in storage
     exit           exit(3) in storage
     spin?ms=M      storage spins M ms, then returns: "r=.. data=spun"
     reqspin?ms=M   the request spins M ms, then calls count: "r=8 count=N"
     order?id=I&ms=M
                    storage appends I to a log, sleeps M ms, returns the log
     allow          STORAGE_ALLOW from a request: "r=-1"
     keep?len=L&seed=S
                    storage gets L bytes of a pattern (seed S) and returns their checksum at
                    storage_return; its clean-up then uses 2 KiB of stack and checks the
                    input again (the next call's inputs must not overwrite it):
                    "r=8 ok=1" (ok: the checksum is right)
     keepstats      "calls=.. bad=.." of keep's clean-ups
     hangafter      storage_return("h", 1), then an endless loop: "r=1 data=h"
     crashafter     storage_return("c", 1), then a NULL write: "r=1 data=c"
     cleanuplog?id=I
                    storage_return("l", 1), then the clean-up prints "cleanup I ran": "r=1 data=l" */
#include "kvm_api.h"
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Patched in the binary by the tests to tell the storage program of an archive apart. */
static const char marker[] = "storage-marker-A";
static long allow_rc = -2;
static long count, cleanups, after_noreturn;
static char order_log[256];
static long kept_calls, kept_bad;

static long param(const char *url, const char *key, long dflt)
{
	const char *q = strchr(url, '?');
	const size_t kl = strlen(key);
	while (q != NULL) {
		q++;
		if (strncmp(q, key, kl) == 0 && q[kl] == '=')
			return strtol(q + kl + 1, NULL, 10);
		q = strchr(q, '&');
	}
	return dflt;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void spin(long ms)
{
	const double end = now_ms() + (double)ms;
	while (now_ms() < end)
		;
}

static int describe(char *out, size_t outl)
{
	const char *t = getenv("KVM_TYPE");
	unsigned int mxcsr;
	__asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
	return snprintf(out, outl, "type=%s is_storage=%d sys=%d allow=%ld mxcsr=%#x marker=%s",
		t ? t : "(none)", IS_STORAGE(), sys_is_storage(), allow_rc, mxcsr, marker);
}

/* ---- storage functions ---- */

static void st_info(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	char out[256];
	const int len = describe(out, sizeof(out));
	storage_return(out, (size_t)len);
}

static void st_concat(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	static char out[4096];
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		const char *d = buf[i].data;
		if (buf[i].len != i + 1) {
			const int l = snprintf(out, sizeof(out), "bad length %zu of buffer %zu", buf[i].len, i);
			storage_return(out, (size_t)l);
			return;
		}
		for (size_t j = 0; j <= i; j++) {
			if (d[j] != (char)('A' + i % 26)) {
				const int l = snprintf(out, sizeof(out), "bad byte in buffer %zu", i);
				storage_return(out, (size_t)l);
				return;
			}
		}
		memcpy(out + at, d, buf[i].len);
		at += buf[i].len;
	}
	storage_return(out, at);
}

static void st_res(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	char out[64];
	const int len = snprintf(out, sizeof(out), "res=%zu", res);
	storage_return(out, (size_t)len);
}

static void st_big(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	static unsigned char *data;
	static size_t have;
	size_t size = 0;
	if (n == 1 && buf[0].len == sizeof(size))
		memcpy(&size, buf[0].data, sizeof(size));
	if (size > have) {
		free(data);
		data = malloc(size);
		have = size;
	}
	for (size_t i = 0; i < size; i++)
		data[i] = (unsigned char)(i * 7 + 3);
	storage_return(data, size);
}

static void st_retnull(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_return(NULL, 42);
}

static void st_nothing(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_return_nothing();
}

static void st_noreturn(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
}

static void st_noresume(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_noreturn("abc", 3);
	after_noreturn++;
}

static void st_cleanup(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_return("x", 1);
	cleanups++;
}

static void st_counters(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	char out[128];
	const int len = snprintf(out, sizeof(out), "count=%ld cleanups=%ld after_noreturn=%ld",
		count, cleanups, after_noreturn);
	storage_return(out, (size_t)len);
}

static void st_count(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	count++;
	storage_return(&count, sizeof(count));
}

static void st_recurse(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	long v = 0;
	const long r = storage_call(st_count, NULL, 0, &v, sizeof(v));
	char out[64];
	const int len = snprintf(out, sizeof(out), "inner=%ld", r);
	storage_return(out, (size_t)len);
}

static void st_forbidden(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_return("forbidden ran", 13);
}

static void st_crash(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	static int *volatile nowhere;
	nowhere[2] = 1;
}

static void st_hang(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	for (;;)
		__asm__ volatile("");
}

static void st_exit(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	exit(3);
}

static void st_spin(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	long ms = 0;
	if (n == 1 && buf[0].len == sizeof(ms))
		memcpy(&ms, buf[0].data, sizeof(ms));
	spin(ms);
	storage_return("spun", 4);
}

static void st_order(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	long arg[2] = {0, 0};
	if (n == 1 && buf[0].len == sizeof(arg))
		memcpy(arg, buf[0].data, sizeof(arg));
	const size_t at = strlen(order_log);
	snprintf(order_log + at, sizeof(order_log) - at, "%s%ld", at ? "," : "", arg[0]);
	if (arg[1] > 0)
		usleep((useconds_t)arg[1] * 1000);
	storage_return(order_log, strlen(order_log));
}

static uint64_t checksum(const unsigned char *d, size_t len)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < len; i++)
		h = (h ^ d[i]) * 1099511628211ull;
	return h;
}

static void st_keep(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	if (n != 1) {
		storage_return_nothing();
		return;
	}
	const uint64_t sum = checksum(buf[0].data, buf[0].len);
	storage_return(&sum, sizeof(sum));
	/* The clean-up: stack below, the input above must still be ours. */
	volatile unsigned char local[2048];
	for (size_t i = 0; i < sizeof(local); i++)
		local[i] = (unsigned char)(i * 7 + sum);
	long bad = checksum(buf[0].data, buf[0].len) != sum;
	for (size_t i = 0; i < sizeof(local); i++)
		bad |= local[i] != (unsigned char)(i * 7 + sum);
	kept_calls++;
	kept_bad += bad;
}

static void st_keepstats(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	char out[64];
	const int len = snprintf(out, sizeof(out), "calls=%ld bad=%ld", kept_calls, kept_bad);
	storage_return(out, (size_t)len);
}

static void st_hangafter(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_return("h", 1);
	for (;;)
		__asm__ volatile("");
}

static void st_crashafter(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	static int *volatile nowhere;
	storage_return("c", 1);
	nowhere[2] = 1;
}

static void st_cleanuplog(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	long id = 0;
	if (n == 1 && buf[0].len == sizeof(id))
		memcpy(&id, buf[0].data, sizeof(id));
	storage_return("l", 1);
	printf("cleanup %ld ran\n", id);
	fflush(stdout);
}

/* ---- request side ---- */

static void reply_call(long r, const char *data, long dstlen)
{
	char out[8192];
	const long shown = r < 0 ? 0 : (r < dstlen ? r : dstlen);
	int len = snprintf(out, sizeof(out), "r=%ld", r);
	if (data != NULL && shown > 0)
		len += snprintf(out + len, sizeof(out) - (size_t)len, " data=%.*s", (int)shown, data);
	respond(200, out);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32];
	action_of(url, action, sizeof(action));
	const long dst = param(url, "dst", 4096);
	char *buf = dst > 0 ? malloc((size_t)dst) : NULL;
	long r;

	if (strcmp(action, "info") == 0) {
		char mine[256], theirs[256];
		describe(mine, sizeof(mine));
		r = storage_call(st_info, NULL, 0, theirs, sizeof(theirs) - 1);
		theirs[r < 0 ? 0 : r] = 0;
		char out[600];
		snprintf(out, sizeof(out), "req %s | st %s", mine, theirs);
		respond(200, out);
	} else if (strcmp(action, "vec") == 0) {
		const long n = param(url, "n", 1);
		static struct virtbuffer v[80];
		static char data[80][80];
		for (long i = 0; i < n && i < 80; i++) {
			memset(data[i], 'A' + i % 26, (size_t)i + 1);
			v[i].data = data[i];
			v[i].len = (size_t)i + 1;
		}
		r = storage_callv(st_concat, (size_t)n, v, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "res") == 0) {
		r = storage_call(st_res, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "big") == 0) {
		const size_t size = (size_t)param(url, "size", 0);
		r = storage_call(st_big, &size, sizeof(size), buf, (size_t)dst);
		char xr[64];
		snprintf(xr, sizeof(xr), "X-R: %ld", r);
		http_append_str(BERESP, xr);
		const long shown = r < 0 ? 0 : (r < dst ? r : dst);
		backend_response(200, "application/octet-stream", 24, buf ? buf : "", (size_t)shown);
	} else if (strcmp(action, "retnull") == 0) {
		r = storage_call(st_retnull, NULL, 0, buf, (size_t)dst);
		reply_call(r, NULL, dst);
	} else if (strcmp(action, "nothing") == 0) {
		r = storage_call(st_nothing, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "noreturn") == 0) {
		r = storage_call(st_noreturn, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "noresume") == 0) {
		r = storage_call(st_noresume, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "cleanup") == 0) {
		r = storage_call(st_cleanup, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "counters") == 0) {
		r = storage_call(st_counters, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "count") == 0 || strcmp(action, "reqspin") == 0) {
		spin(param(url, "ms", 0));
		long v = 0;
		r = storage_call(st_count, NULL, 0, &v, sizeof(v));
		char out[64];
		snprintf(out, sizeof(out), "r=%ld count=%ld", r, v);
		respond(200, out);
	} else if (strcmp(action, "recurse") == 0) {
		r = storage_call(st_recurse, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "notallowed") == 0) {
		r = storage_call(st_forbidden, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "crash") == 0) {
		r = storage_call(st_crash, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "hang") == 0) {
		r = storage_call(st_hang, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "exit") == 0) {
		r = storage_call(st_exit, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "spin") == 0) {
		const long ms = param(url, "ms", 0);
		r = storage_call(st_spin, &ms, sizeof(ms), buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "order") == 0) {
		const long a[2] = {param(url, "id", 0), param(url, "ms", 0)};
		r = storage_call(st_order, a, sizeof(a), buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "keep") == 0) {
		const long len = param(url, "len", 0);
		const long seed = param(url, "seed", 0);
		static unsigned char data[1 << 16];
		const size_t l = len < 0 ? 0 : (len > (long)sizeof(data) ? sizeof(data) : (size_t)len);
		for (size_t i = 0; i < l; i++)
			data[i] = (unsigned char)(i * 13 + seed);
		uint64_t sum = 0;
		r = storage_call(st_keep, data, l, &sum, sizeof(sum));
		char out[64];
		snprintf(out, sizeof(out), "r=%ld ok=%d", r, sum == checksum(data, l));
		respond(200, out);
	} else if (strcmp(action, "keepstats") == 0) {
		r = storage_call(st_keepstats, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "hangafter") == 0) {
		r = storage_call(st_hangafter, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "crashafter") == 0) {
		r = storage_call(st_crashafter, NULL, 0, buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "cleanuplog") == 0) {
		const long id = param(url, "id", 0);
		r = storage_call(st_cleanuplog, &id, sizeof(id), buf, (size_t)dst);
		reply_call(r, buf, dst);
	} else if (strcmp(action, "allow") == 0) {
		reply_call(STORAGE_ALLOW(st_count), NULL, 0);
	} else {
		respond(404, "unknown action");
	}
}

int main(void)
{
	/* Every storage function but st_forbidden. In the main VM these calls are refused (-1). */
	storage_func allowed[] = {st_info, st_concat, st_res, st_big, st_retnull, st_nothing,
		st_noreturn, st_noresume, st_cleanup, st_counters, st_count, st_recurse, st_crash,
		st_hang, st_exit, st_spin, st_order, st_keep, st_keepstats, st_hangafter,
		st_crashafter, st_cleanuplog};
	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
		const long rc = STORAGE_ALLOW(allowed[i]);
		if (i == 0 || rc != 0)
			allow_rc = rc;
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
