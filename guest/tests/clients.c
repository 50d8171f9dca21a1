/* clients.c: the program behind the hostile-client tests (crates/edgevm/tests/all/clients.rs).

   Every request (GET or POST) counts itself in shared memory (`shared_memory` must be
   configured): `started` on entry, `finished` just before responding; and reads, then sets,
   a global `dirty` that is 0 in the frozen image, so `dirty=1` means a request VM was NOT
   reset after the previous request.

     /<prog>/sleep?ms=N   sleep N ms first (a request a client can walk away from)
     /<prog>/...          answer at once

   Response body: "started=S finished=F dirty=D len=L method=M" (L: request body length).
   A request that sleeps sets X-Slept. */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct counters {
	unsigned long started;
	unsigned long finished;
};

static struct counters *shm;
static int dirty;

static void handle(const char *url, size_t len)
{
	__sync_fetch_and_add(&shm->started, 1);
	const int was_dirty = dirty;
	dirty = 1;
	const char *ms = strstr(url, "/sleep?ms=");
	if (ms != NULL) {
		const long v = atol(ms + 10);
		struct timespec ts = { v / 1000, (v % 1000) * 1000000L };
		nanosleep(&ts, NULL);
		http_append_str(RESP, "X-Slept: yes");
	}
	char method[16] = "?";
	sys_http_method(method, sizeof(method));
	const unsigned long done = __sync_add_and_fetch(&shm->finished, 1);
	char out[256];
	const int n = snprintf(out, sizeof(out), "started=%lu finished=%lu dirty=%d len=%zu method=%s",
			       shm->started, done, was_dirty, len, method);
	backend_response(200, "text/plain", 10, out, (size_t)n);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	handle(url, 0);
}

static void on_post(const char *url, const char *arg, const char *ctype, const uint8_t *data, size_t len)
{
	(void)arg;
	(void)ctype;
	(void)data;
	handle(url, len);
}

int main(void)
{
	shm = SHM_ALLOC_TYPE(*shm);
	if (shm == NULL) {
		fprintf(stderr, "clients: no shared memory (configure \"shared_memory\")\n");
		return 1;
	}
	set_backend_get(on_get);
	set_backend_post(on_post);
	wait_for_requests();
}
