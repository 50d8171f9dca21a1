/* stream.c: a streamed response. GET /stream?lines=N answers N numbered lines, each made
 * when the server asks for the next piece of the body (begin_streaming_response): the client
 * sees them arrive one by one, chunked, while the program is still producing the rest. */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

struct table {
	unsigned lines, next; /* lines to send, the next one */
	char line[64];
};

static int format_line(char *out, size_t outl, unsigned i)
{
	return snprintf(out, outl, "%u squared is %lu\n", i, (unsigned long)i * i);
}

/* Called by the server for each piece of the body: one line (at most `max` bytes). */
static struct streaming_content next_piece(void *arg, size_t max, size_t written, size_t total)
{
	struct table *t = arg;
	(void)written;
	(void)total;
	size_t n = (size_t)format_line(t->line, sizeof(t->line), t->next++);
	struct streaming_content c = { t->line, n < max ? n : max };
	return c;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char buf[16];
	struct table t = { 10, 1, { 0 } }; /* lives on, on this stack, while the body is sent */
	if (url_query_param(url, "lines", buf, sizeof(buf)) > 0)
		sscanf(buf, "%u", &t.lines);
	if (t.lines > 100000)
		t.lines = 100000;
	/* The whole length up front: the sum of the lines' lengths. */
	size_t total = 0;
	for (unsigned i = 1; i <= t.lines; i++)
		total += (size_t)format_line(NULL, 0, i);
	http_set_str(RESP, "X-Lines: streamed");
	begin_streaming_response(200, "text/plain", 10, total, next_piece, &t);
}

int main(int argc, char **argv)
{
	(void)argc;
	if (IS_LINUX_MAIN()) {
		puts("stream: run me inside edgevm");
		return 0;
	}
	set_backend_get(on_get);
	wait_for_requests();
}
