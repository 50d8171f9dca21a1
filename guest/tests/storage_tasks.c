/* storage_tasks.c: storage tasks (storage_task, schedule_storage_task, stop_storage_task),
   for tests/all/storage_tasks.rs. The action is the second path segment:

     add?n=N          storage_task(add, &N): queued now; "id=<ret>"
     later?n=N&ms=M   schedule_storage_task(add, &N, M/1000 s, 0): once, after M ms; "id=<ret>"
     tick?ms=M        schedule_storage_task(tick, NULL, 0, M ms, M ms): periodic; "id=<ret>"
     stop?id=I        stop_storage_task(I): "r=<ret>"
     get              "total=<sum of added n> ticks=<tick runs>" (a storage call)
     fromstorage?n=N  a storage function that queues add(N) itself: "r=<its storage_task ret>"
     evil             storage_task(evil): evil is not in STORAGE_ALLOW; "id=<ret>"
     crash            storage_task(crasher): the task writes to NULL; "id=<ret>"
     huge             storage_task with 3 MB of data: "id=<ret>"
     initinfo         what main() got from its own storage_call and storage_task:
                      "call=<ret> value=<data> task=<ret>" */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long total, ticks, evil_runs;
/* The storage VM's own main() scheduled a task (id) and queued one: how often each ran. */
static long boot_id = -100, boot_ticks, boot_marks;
static long init_call = -9, init_value = -9, init_task = -9;

static void respond(const char *text)
{
	backend_response(200, "text/plain", 10, text, strlen(text));
}

static long qnum(const char *url, const char *key)
{
	const char *q = strchr(url, '?');
	size_t kl = strlen(key);
	while (q != NULL) {
		q++;
		if (strncmp(q, key, kl) == 0 && q[kl] == '=')
			return atol(q + kl + 1);
		q = strchr(q, '&');
	}
	return 0;
}

static void add(void *data, size_t len)
{
	if (len == sizeof(long))
		total += *(long *)data;
}

static void tick(void *data, size_t len)
{
	(void)data;
	(void)len;
	ticks++;
}

static void boot_tick(void *data, size_t len)
{
	(void)data;
	(void)len;
	boot_ticks++;
}

static void boot_mark(void *data, size_t len)
{
	if (len == 4 && memcmp(data, "boot", 4) == 0)
		boot_marks++;
}

static void evil(void *data, size_t len)
{
	(void)data;
	(void)len;
	evil_runs++;
}

static void crasher(void *data, size_t len)
{
	(void)data;
	(void)len;
	*(volatile long *)0 = 1;
}

static void get(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	char out[160];
	int l = snprintf(out, sizeof(out), "total=%ld ticks=%ld evil=%ld bootid=%ld boottick=%ld bootmark=%ld",
		total, ticks, evil_runs, boot_id, boot_ticks, boot_marks);
	storage_return(out, (size_t)l);
}

static void from_storage(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	long v = *(long *)buf[0].data;
	long r = storage_task(add, &v, sizeof(v));
	storage_return(&r, sizeof(r));
}

static void init_mark(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	long v = n == 1 ? *(long *)buf[0].data + 1 : -1;
	storage_return(&v, sizeof(v));
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char out[128];
	const char *a = strchr(url + 1, '/');
	a = a ? a + 1 : "";
	long n = qnum(url, "n");
	if (strncmp(a, "add", 3) == 0) {
		snprintf(out, sizeof(out), "id=%ld", storage_task(add, &n, sizeof(n)));
	} else if (strncmp(a, "later", 5) == 0) {
		float s = (float)qnum(url, "ms") / 1000.0f;
		snprintf(out, sizeof(out), "id=%ld",
			schedule_storage_task(add, &n, sizeof(n), s, 0.0f));
	} else if (strncmp(a, "tick", 4) == 0) {
		float s = (float)qnum(url, "ms") / 1000.0f;
		snprintf(out, sizeof(out), "id=%ld", schedule_storage_task(tick, NULL, 0, s, s));
	} else if (strncmp(a, "stop", 4) == 0) {
		snprintf(out, sizeof(out), "r=%ld", stop_storage_task(qnum(url, "id")));
	} else if (strncmp(a, "get", 3) == 0) {
		char buf[96] = {0};
		long r = storage_call(get, NULL, 0, buf, sizeof(buf) - 1);
		snprintf(out, sizeof(out), "%s", r > 0 ? buf : "get failed");
	} else if (strncmp(a, "fromstorage", 11) == 0) {
		long r = -2;
		storage_call(from_storage, &n, sizeof(n), &r, sizeof(r));
		snprintf(out, sizeof(out), "r=%ld", r);
	} else if (strncmp(a, "evil", 4) == 0) {
		snprintf(out, sizeof(out), "id=%ld", storage_task(evil, NULL, 0));
	} else if (strncmp(a, "crash", 5) == 0) {
		snprintf(out, sizeof(out), "id=%ld", storage_task(crasher, NULL, 0));
	} else if (strncmp(a, "initinfo", 8) == 0) {
		snprintf(out, sizeof(out), "call=%ld value=%ld task=%ld", init_call, init_value,
			init_task);
	} else if (strncmp(a, "huge", 4) == 0) {
		size_t sz = 3 << 20;
		char *p = calloc(1, sz);
		snprintf(out, sizeof(out), "id=%ld", storage_task(add, p, sz));
	} else {
		snprintf(out, sizeof(out), "unknown action");
	}
	respond(out);
}

int main(void)
{
	STORAGE_ALLOW(add);
	STORAGE_ALLOW(tick);
	STORAGE_ALLOW(crasher);
	STORAGE_ALLOW(get);
	STORAGE_ALLOW(from_storage);
	STORAGE_ALLOW(init_mark);
	STORAGE_ALLOW(boot_tick);
	STORAGE_ALLOW(boot_mark);
	if (IS_STORAGE()) {
		/* The storage VM's main() schedules storage tasks too: one 50 ms from now (the
		   first timer: id 1), one queued now. */
		boot_id = schedule_storage_task(boot_tick, NULL, 0, 0.05f, 0.0f);
		storage_task(boot_mark, "boot", 4);
	}
	if (!IS_STORAGE()) {
		/* The main VM may use storage during initialization already. */
		long v = 41;
		init_call = storage_call(init_mark, &v, sizeof(v), &init_value, sizeof(init_value));
		long n = 1000;
		init_task = storage_task(add, &n, sizeof(n));
	}
	set_backend_get(on_get);
	wait_for_requests();
}
