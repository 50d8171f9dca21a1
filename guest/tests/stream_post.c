/* Streamed request bodies (set_backend_stream_post) for tests/all/stream_post.rs. Every
 * segment goes through on_segment (FNV-1a over the whole body, offsets checked); the POST
 * handler then answers what it saw. /<program>/<mode>: "sum" answers the digest; the other
 * modes misbehave at the second segment (or later). */
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>

static unsigned long long fnv = 1469598103934665603ull, bytes, segments, bad_offsets;

static unsigned long long fnv_of(const uint8_t *p, size_t n, unsigned long long h)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 1099511628211ull;
	}
	return h;
}

static long on_segment(const char *url, const char *arg, const char *ctype, const uint8_t *data,
	size_t len, size_t off)
{
	(void)arg;
	(void)ctype;
	char mode[32];
	action_of(url, mode, sizeof(mode));
	if (off != bytes)
		bad_offsets++;
	segments++;
	if (segments == 2 || off > (1u << 20)) {
		if (strcmp(mode, "partial") == 0)
			return (long)len - 1;
		if (strcmp(mode, "crash") == 0) {
			volatile int *volatile bad = (volatile int *)8;
			*bad = 1;
		}
		if (strcmp(mode, "loop") == 0)
			for (;;)
				__asm__ volatile("" ::: "memory");
		if (strcmp(mode, "early") == 0 && off > (1u << 20))
			respond(200, "early answer");
	}
	fnv = fnv_of(data, len, fnv);
	bytes += len;
	return (long)len;
}

static void on_post(const char *url, const char *arg, const char *ctype, const uint8_t *data,
	size_t len)
{
	(void)url;
	(void)arg;
	char out[256];
	/* With the whole body in the area, its digest must be the one of the segments. */
	const char *whole = data == NULL ? "none" : fnv_of(data, len, 1469598103934665603ull) == fnv ? "same" : "DIFFERENT";
	snprintf(out, sizeof(out), "segments=%s bytes=%llu len=%zu fnv=%016llx whole=%s offsets=%s ctype=%s",
		segments > 0 ? "some" : "none", bytes, len, fnv, whole, bad_offsets ? "BAD" : "ok", ctype);
	respond(200, out);
}

int main(void)
{
	set_backend_stream_post(on_segment);
	set_backend_post(on_post);
	wait_for_requests();
	return 0;
}
