/* threads.c: pthreads inside a VM (tests/all/threads.rs).

   main() starts a worker pool (WORKERS threads waiting on a condition variable) before
   wait_for_requests(): the pool is frozen with the program and every request finds it
   waiting. Requests (GET /threads/<action>?...):
     pool?jobs=N     N jobs through the frozen pool (mutex + two condition variables); the
                     workers check their floating-point state across switches
     spawn?n=N       N new threads (create, join), each yields and sleeps; distinct TIDs
     tid             TID of a thread created now (the same in every request: threads
                     started by a request are gone after its reset)
     spin            two threads spinning on a shared flag without any system call (needs
                     the host's time slices)
     timedwait       pthread_cond_timedwait for 30 ms: ETIMEDOUT
     deadlock        two threads lock two mutexes in opposite orders: the VM reports it
     futex_bad       futex on bad, unaligned and read-only addresses: the errors
     detach?n=N      N detached threads that exit with pthread_exit; the request answers
                     when the last one has run
     fpu             two threads computing with different rounding modes (MXCSR) in long
                     loops without system calls, preempted by the host: each gets the
                     results it gets alone
   Run with arguments (edgevm run threads run): starts threads, prints their results and
   returns from main() while one still sleeps (exit_group ends them all). */
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <fenv.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 4

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int queued, done, bad_fpu;
static double results[1024];
static int job_worker[1024];
static int next_job, jobs_total;
static atomic_int workers_ready;

static double work(int j)
{
	double x = 1.0 + j;
	for (int i = 0; i < 2000; i++)
		x = x * 1.000001 + 0.5 / (i + 1);
	return x;
}

static void *worker(void *arg)
{
	const int me = (int)(long)arg;
	atomic_fetch_add(&workers_ready, 1);
	pthread_mutex_lock(&mu);
	for (;;) {
		while (queued == 0)
			pthread_cond_wait(&work_cv, &mu);
		queued--;
		const int j = next_job++;
		pthread_mutex_unlock(&mu);
		/* Floating-point state held across a switch: computed, yield, recomputed. */
		const double a = work(j);
		volatile double keep = a * 3.0;
		sched_yield();
		const double b = work(j);
		if (a != b || keep != a * 3.0)
			bad_fpu++;
		pthread_mutex_lock(&mu);
		results[j] = a;
		job_worker[j] = me;
		done++;
		pthread_cond_signal(&done_cv);
	}
	return NULL;
}

static void pool(const char *url)
{
	const char *p = query_param(url, "jobs");
	int n = p ? atoi(p) : 8;
	if (n < 1 || n > 1024)
		n = 8;
	pthread_mutex_lock(&mu);
	next_job = 0;
	done = 0;
	jobs_total = n;
	queued += n;
	pthread_cond_broadcast(&work_cv);
	while (done < jobs_total)
		pthread_cond_wait(&done_cv, &mu);
	pthread_mutex_unlock(&mu);
	double sum = 0;
	int used[WORKERS] = { 0 }, nused = 0;
	for (int j = 0; j < n; j++) {
		sum += results[j];
		if (!used[job_worker[j]]++)
			nused++;
	}
	char out[160];
	snprintf(out, sizeof(out), "pool: %d jobs, sum %.3f, %d workers used, fpu errors %d",
		 n, sum, nused, bad_fpu);
	respond(200, out);
}

static atomic_long total;

static void *spawned(void *arg)
{
	const long i = (long)arg;
	const long tid = syscall(SYS_gettid);
	sched_yield();
	usleep(1000);
	atomic_fetch_add(&total, i);
	return (void *)tid;
}

static void spawn(const char *url)
{
	const char *p = query_param(url, "n");
	int n = p ? atoi(p) : 4;
	if (n < 1 || n > 50)
		n = 4;
	pthread_t t[50];
	long tids[50];
	atomic_store(&total, 0);
	for (int i = 0; i < n; i++) {
		int r = pthread_create(&t[i], NULL, spawned, (void *)(long)(i + 1));
		if (r != 0) {
			char out[80];
			snprintf(out, sizeof(out), "pthread_create %d: %s", i, strerror(r));
			respond(500, out);
			return;
		}
	}
	int distinct = 1;
	for (int i = 0; i < n; i++) {
		void *rv;
		pthread_join(t[i], &rv);
		tids[i] = (long)rv;
		for (int k = 0; k < i; k++)
			if (tids[k] == tids[i] || tids[i] <= 1)
				distinct = 0;
	}
	char out[120];
	snprintf(out, sizeof(out), "spawn: %d threads, total %ld, distinct tids %d", n,
		 atomic_load(&total), distinct);
	respond(200, out);
}

static void *tid_thread(void *arg)
{
	(void)arg;
	return (void *)syscall(SYS_gettid);
}

static void tid(void)
{
	pthread_t t;
	void *rv;
	pthread_create(&t, NULL, tid_thread, NULL);
	pthread_join(t, &rv);
	char out[64];
	snprintf(out, sizeof(out), "tid %ld", (long)rv);
	respond(200, out);
}

static volatile int flag_a, flag_b;

static void *spinner(void *arg)
{
	(void)arg;
	while (!flag_a) /* no system call: only the host's time slice lets main run */
		;
	flag_b = 1;
	return NULL;
}

static void spin(void)
{
	flag_a = flag_b = 0;
	pthread_t t;
	pthread_create(&t, NULL, spinner, NULL);
	/* Make sure the spinner runs first and spins. */
	sched_yield();
	flag_a = 1;
	while (!flag_b)
		;
	pthread_join(t, NULL);
	respond(200, "spin: both ran");
}

static void timedwait(void)
{
	pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t c = PTHREAD_COND_INITIALIZER;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 30 * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&m);
	int r = pthread_cond_timedwait(&c, &m, &ts);
	pthread_mutex_unlock(&m);
	char out[64];
	snprintf(out, sizeof(out), "timedwait: %s", r == ETIMEDOUT ? "ETIMEDOUT" : strerror(r));
	respond(200, out);
}

static pthread_mutex_t m1 = PTHREAD_MUTEX_INITIALIZER, m2 = PTHREAD_MUTEX_INITIALIZER;
static atomic_int has_m2;

static void *lock_21(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&m2);
	atomic_store(&has_m2, 1);
	pthread_mutex_lock(&m1);
	return NULL;
}

static void deadlock(void)
{
	pthread_t t;
	pthread_mutex_lock(&m1);
	pthread_create(&t, NULL, lock_21, NULL);
	while (!atomic_load(&has_m2))
		sched_yield();
	pthread_mutex_lock(&m2);
	respond(200, "FAIL: no deadlock");
}

static long futex(void *addr, int op, int val, void *ts)
{
	long r = syscall(SYS_futex, addr, op, val, ts, NULL, 0);
	return r < 0 ? -errno : r;
}

static void futex_bad(void)
{
	static int word = 5;
	char out[256];
	snprintf(out, sizeof(out),
		 "null wait %ld, null wake %ld, unaligned %ld, kernel %ld, wrong value %ld, "
		 "bad timeout %ld, wake none %ld, bitset 0 %ld",
		 futex(NULL, FUTEX_WAIT, 0, NULL), futex(NULL, FUTEX_WAKE, 1, NULL),
		 futex((char *)&word + 1, FUTEX_WAIT, 5, NULL),
		 futex((void *)0xffffffffff600000ul, FUTEX_WAIT, 0, NULL),
		 futex(&word, FUTEX_WAIT, 4, NULL), futex(&word, FUTEX_WAIT, 5, (void *)16),
		 futex(&word, FUTEX_WAKE, 10, NULL),
		 syscall(SYS_futex, &word, FUTEX_WAIT_BITSET, 5, NULL, NULL, 0) < 0 ? -errno : 0L);
	respond(200, out);
}

static atomic_int detached_done;

static void *detached(void *arg)
{
	(void)arg;
	usleep(500);
	atomic_fetch_add(&detached_done, 1);
	pthread_exit(NULL);
}

static void detach(const char *url)
{
	const char *p = query_param(url, "n");
	int n = p ? atoi(p) : 4;
	if (n < 1 || n > 50)
		n = 4;
	atomic_store(&detached_done, 0);
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	for (int i = 0; i < n; i++) {
		pthread_t t;
		pthread_create(&t, &at, detached, NULL);
	}
	while (atomic_load(&detached_done) < n)
		usleep(200);
	char out[64];
	snprintf(out, sizeof(out), "detach: %d done", n);
	respond(200, out);
}

/* noipa: gcc would otherwise call it once for both rounding modes. */
__attribute__((noipa)) static double fpu_loop(long n)
{
	double x = 0.1, y = 3.0;
	for (long i = 0; i < n; i++) {
		x = x * 1.0000001 + y / (double)(i + 3);
		y = y * 0.9999999 + 1e-9;
	}
	return x + y;
}

#define FPU_ITER 4000000L

static void *fpu_thread(void *arg)
{
	static double out[2];
	const long mode = (long)arg;
	fesetround(mode ? FE_UPWARD : FE_TONEAREST);
	out[mode] = fpu_loop(FPU_ITER);
	return &out[mode];
}

static void fpu(void)
{
	fesetround(FE_UPWARD);
	const double up = fpu_loop(FPU_ITER);
	fesetround(FE_TONEAREST);
	const double near = fpu_loop(FPU_ITER);
	pthread_t a, b;
	void *ra, *rb;
	pthread_create(&a, NULL, fpu_thread, (void *)0L);
	pthread_create(&b, NULL, fpu_thread, (void *)1L);
	pthread_join(a, &ra);
	pthread_join(b, &rb);
	const int same = *(double *)ra == near && *(double *)rb == up && up != near;
	respond(200, same ? "fpu: same" : "fpu: DIFFERENT");
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32];
	action_of(url, action, sizeof(action));
	if (strcmp(action, "pool") == 0)
		pool(url);
	else if (strcmp(action, "spawn") == 0)
		spawn(url);
	else if (strcmp(action, "tid") == 0)
		tid();
	else if (strcmp(action, "spin") == 0)
		spin();
	else if (strcmp(action, "timedwait") == 0)
		timedwait();
	else if (strcmp(action, "deadlock") == 0)
		deadlock();
	else if (strcmp(action, "futex_bad") == 0)
		futex_bad();
	else if (strcmp(action, "detach") == 0)
		detach(url);
	else if (strcmp(action, "fpu") == 0)
		fpu();
	else
		respond(404, "unknown action");
}

static void *sleeper(void *arg)
{
	(void)arg;
	sleep(3600);
	return NULL;
}

static int run_mode(void)
{
	pthread_t t[3], s;
	atomic_store(&total, 0);
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, spawned, (void *)(long)(i + 1));
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	pthread_create(&s, NULL, sleeper, NULL);
	printf("threads: total %ld\n", atomic_load(&total));
	fflush(stdout);
	return 0; /* exit_group with the sleeper still there */
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "run") == 0)
		return run_mode();
	for (long i = 0; i < WORKERS; i++) {
		pthread_t t;
		pthread_create(&t, NULL, worker, (void *)i);
	}
	while (atomic_load(&workers_ready) < WORKERS)
		sched_yield();
	set_backend_get(on_get);
	printf("pool of %d workers ready\n", WORKERS);
	fflush(stdout);
	wait_for_requests();
	return 0;
}
