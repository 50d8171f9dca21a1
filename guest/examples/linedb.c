/* linedb.c: a page-view counter kept in a Redis-like line service.

   The service speaks one line per command and one line per answer:
       PING -> +PONG      INCR key -> :N      GET key -> $value or -nil
       SET key value -> +OK      QUIT -> +BYE (and closes)
   Its address comes from the environment: LINEDB=host:port (e.g. in the configuration
   "environment": ["LINEDB=127.0.0.1:6380"]), resolved with getaddrinfo(). The network policy
   decides whether the program may reach it: a service on the loopback or a private network
   must be listed in "allow_net" ("127.0.0.1:6380").

   GET /linedb/<page>  increments the page's counter and answers "<page>: N views"
   POST /linedb/<page> stores the body (one word) under the page and answers it back

   Each request opens its own connection (a request VM is reset after the answer, and its
   sockets with it). */
#include "kvm_api.h"
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char host[256], port[16];

/* Connect to the service: a descriptor, or -1. */
static int connect_service(void)
{
	struct addrinfo hints, *res;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, port, &hints, &res) != 0)
		return -1;
	int fd = -1;
	for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

/* Send one command line and read the answer line (without CR LF) into ans. */
static int command(int fd, const char *cmd, char *ans, size_t n)
{
	char line[600];
	const int len = snprintf(line, sizeof(line), "%s\r\n", cmd);
	if (len < 0 || (size_t)len >= sizeof(line) || send(fd, line, (size_t)len, MSG_NOSIGNAL) != len)
		return -1;
	size_t got = 0;
	while (got + 1 < n) {
		const ssize_t r = recv(fd, ans + got, 1, 0);
		if (r <= 0)
			return -1;
		if (ans[got] == '\n')
			break;
		got++;
	}
	if (got > 0 && ans[got - 1] == '\r')
		got--;
	ans[got] = 0;
	return 0;
}

/* The page name: the path after /linedb/, letters, digits, '-' and '_' only. */
static int page_of(const char *url, char *page, size_t n)
{
	const char *p = strstr(url, "/linedb/");
	if (p == NULL)
		return -1;
	p += strlen("/linedb/");
	size_t i = 0;
	while (p[i] != 0 && p[i] != '?' && i + 1 < n) {
		const char c = p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return -1;
		page[i] = c;
		i++;
	}
	page[i] = 0;
	return i > 0 ? 0 : -1;
}

static void answer(int fd, int16_t status, const char *text)
{
	if (fd >= 0) {
		char bye[16];
		command(fd, "QUIT", bye, sizeof(bye));
		close(fd);
	}
	backend_response_str(status, "text/plain", text);
}

/* Count a view of `page` at the service: the answer text in out, or NULL. */
static const char *count_view(const char *page, char *out, size_t n)
{
	char cmd[128], ans[512], bye[16];
	const int fd = connect_service();
	if (fd < 0)
		return NULL;
	snprintf(cmd, sizeof(cmd), "INCR views:%s", page);
	const int ok = command(fd, cmd, ans, sizeof(ans)) == 0 && ans[0] == ':';
	command(fd, "QUIT", bye, sizeof(bye));
	close(fd);
	if (!ok)
		return NULL;
	snprintf(out, n, "%s: %s views\n", page, ans + 1);
	return out;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char page[64], out[700];
	if (page_of(url, page, sizeof(page)) != 0)
		answer(-1, 400, "usage: GET /linedb/<page>\n");
	if (count_view(page, out, sizeof(out)) == NULL)
		answer(-1, 502, "the line service is not reachable or failed\n");
	answer(-1, 200, out);
}

static void on_post(const char *url, const char *arg, const char *ctype, const uint8_t *data, size_t len)
{
	(void)arg;
	(void)ctype;
	char page[64], word[256], cmd[400], ans[512], out[600];
	size_t n = 0;
	while (n < len && n + 1 < sizeof(word) && data[n] > ' ' && data[n] < 127) {
		word[n] = (char)data[n];
		n++;
	}
	word[n] = 0;
	if (page_of(url, page, sizeof(page)) != 0 || n == 0)
		answer(-1, 400, "usage: POST /linedb/<page> with one word\n");
	const int fd = connect_service();
	if (fd < 0)
		answer(-1, 502, "the line service is not reachable\n");
	snprintf(cmd, sizeof(cmd), "SET page:%s %s", page, word);
	char got[512];
	snprintf(got, sizeof(got), "GET page:%s", page);
	if (command(fd, cmd, ans, sizeof(ans)) != 0 || command(fd, got, ans, sizeof(ans)) != 0)
		answer(fd, 502, "the line service failed\n");
	snprintf(out, sizeof(out), "%s = %s\n", page, ans[0] == '$' ? ans + 1 : "(nothing)");
	answer(fd, 200, out);
}

int main(void)
{
	const char *addr = getenv("LINEDB");
	const char *colon = addr ? strrchr(addr, ':') : NULL;
	if (colon == NULL || (size_t)(colon - addr) >= sizeof(host) || strlen(colon + 1) >= sizeof(port)) {
		fprintf(stderr, "linedb: set LINEDB=host:port in the program's environment\n");
		return 1;
	}
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = 0;
	strcpy(port, colon + 1);
	/* Run as a Linux process with BENCH_CALLS=N: N views counted natively (for the
	   benchmark beside a request, docs/BENCHMARKS.md). */
	const char *bench = getenv("BENCH_CALLS");
	if (bench != NULL) {
		const int n = atoi(bench);
		char out[700];
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (int i = 0; i < n; i++)
			if (count_view("bench", out, sizeof(out)) == NULL)
				return 1;
		clock_gettime(CLOCK_MONOTONIC, &b);
		const double us = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / 1e3;
		printf("%d calls, %.1f us/call; last: %s", n, us / (n > 0 ? n : 1), out);
		return 0;
	}
	set_backend_get(on_get);
	set_backend_post(on_post);
	wait_for_requests();
}
