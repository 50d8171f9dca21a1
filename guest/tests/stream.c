/* Streaming responses (begin_streaming_response) for tests/all/stream.rs. The request URL is
 * /<program>/<mode>?n=N: every mode streams from a callback whose state lives on the
 * handler's stack (the handler never returns, so its frame stays alive). Hostile modes break
 * the contract in one way each; the test checks that the stream fails cleanly and that the
 * next request is served. */
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct state {
	const char *mode;
	unsigned n;       /* chunks to send */
	unsigned sent;    /* chunks sent so far */
	unsigned calls;   /* callback calls */
	char buf[4096];
};

static unsigned long long global_calls; /* reset with every request (ephemeral) */

static size_t chunk_len(unsigned i)
{
	return (size_t)snprintf(NULL, 0, "chunk %u of the stream\n", i);
}

static void pause_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static struct streaming_content on_chunk(void *arg, size_t max, size_t written, size_t total)
{
	struct state *s = arg;
	struct streaming_content c = { s->buf, 0 };
	s->calls++;
	global_calls++;
	const char *m = s->mode;
	if (strcmp(m, "big") == 0) {
		/* `max` bytes of a pattern that depends on the offset. */
		static char big[1 << 20];
		size_t n = max < sizeof(big) ? max : sizeof(big);
		for (size_t i = 0; i < n; i++)
			big[i] = (char)('a' + (written + i) % 26);
		c.data = big;
		c.len = n;
		return c;
	}
	if (strcmp(m, "forever") == 0) {
		static char blk[65536];
		memset(blk, 'x', sizeof(blk));
		c.data = blk;
		c.len = max < sizeof(blk) ? max : sizeof(blk);
		return c;
	}
	if (s->sent == 2) {
		/* The hostile modes misbehave at the third chunk. */
		if (strcmp(m, "stall") == 0)
			for (;;)
				__asm__ volatile("" ::: "memory");
		if (strcmp(m, "sleep") == 0)
			pause_ms(5000);
		if (strcmp(m, "zero") == 0)
			return c;
		if (strcmp(m, "badptr") == 0) {
			c.data = (const void *)0x1000ul; /* the GDT: never program memory */
			c.len = 16;
			return c;
		}
		if (strcmp(m, "wildptr") == 0) {
			c.data = (const void *)0x7fffffffff00ul;
			c.len = 4096;
			return c;
		}
		if (strcmp(m, "toolong") == 0) {
			c.len = max + 1;
			return c;
		}
		if (strcmp(m, "crash") == 0) {
			volatile int *volatile bad = (volatile int *)8;
			*bad = 1;
		}
		if (strcmp(m, "exit") == 0)
			exit(3);
		if (strcmp(m, "respond") == 0)
			respond(200, "answered from the callback");
		if (strcmp(m, "again") == 0)
			begin_streaming_response(200, "text/plain", 10, 5, on_chunk, s);
	}
	if (strcmp(m, "slow") == 0 && s->sent > 0)
		pause_ms(300);
	/* Normal: "chunk I of the stream\n", one per call (written tells where we are). */
	int len = snprintf(s->buf, sizeof(s->buf), "chunk %u of the stream\n", s->sent);
	if ((size_t)len > max)
		len = (int)max;
	s->sent++;
	c.len = (size_t)len;
	(void)total;
	return c;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char mode[32];
	action_of(url, mode, sizeof(mode));
	const char *np = query_param(url, "n");
	struct state s;
	memset(&s, 0, sizeof(s));
	s.mode = mode;
	s.n = np ? (unsigned)atoi(np) : 5;
	size_t total = 0;
	for (unsigned i = 0; i < s.n; i++)
		total += chunk_len(i);
	if (strcmp(mode, "calls") == 0) {
		/* What the previous request left behind: nothing (ephemeral). */
		char out[64];
		snprintf(out, sizeof(out), "calls=%llu", global_calls);
		respond(200, out);
	}
	if (strcmp(mode, "big") == 0)
		total = (size_t)(np ? atoi(np) : 3) << 20 | 12345;
	if (strcmp(mode, "forever") == 0)
		total = 1ul << 40;
	if (strcmp(mode, "empty") == 0)
		total = 0;
	http_append_str(RESP, "X-Streamed: yes");
	if (strcmp(mode, "badstatus") == 0)
		begin_streaming_response(99, "text/plain", 10, total, on_chunk, &s);
	if (strcmp(mode, "badctype") == 0)
		begin_streaming_response(200, (const void *)0x2000ul, 10, total, on_chunk, &s);
	if (strcmp(mode, "badcb") == 0)
		begin_streaming_response(200, "text/plain", 10, total, (content_stream_func)0x1234ul, &s);
	if (strcmp(mode, "nullcb") == 0)
		begin_streaming_response(200, "text/plain", 10, total, NULL, &s);
	begin_streaming_response(200, "text/plain", 10, total, on_chunk, &s);
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
