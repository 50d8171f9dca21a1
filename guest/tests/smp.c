/* smp.c: multiprocess, multiprocess_array, multiprocess_clone, multiprocess_wait and vcpuid()
   on extra vCPUs (the "smp" key), for tests/all/smp.rs. Written for this project against
   kvm_api.h as the reference documents the calls.

     sum?n=N     N vCPUs sum a shared array, each its slice by vcpuid(): "sum S ids ..."
     args        multiprocess with 4 arguments (arg, then 3 more in RCX, R8, R9)
     array       multiprocess_array: worker k gets (&array[k], element size)
     clone       multiprocess_clone: every vCPU goes on after the call on its own stack
     refused     the calls' -1 cases (n out of range, bad function, bad stacks, twice)
     bench?n=N&w=W   W units of work over N vCPUs (docs/BENCHMARKS.md)
   Hostile (each fails the request):
     loop        workers that never end; the handler waits
     crash       a worker dereferences a bad pointer
     badfn       the worker function is data (not executable)
     syscall     a worker calls write()
     hypercall   a worker calls a kvm_api function (sys_is_storage)
     recursive   a worker calls multiprocess()
     mprotect    the handler changes page protections while workers run
   And:
     exit        workers spin on the counter; the handler calls _exit() (fails)
     nowait      workers spin on a shared-memory counter forever; the handler answers at once
     ticks       is that counter still moving? ("still N" / "moving A B")
     yield       workers call sched_yield() (allowed) */
#include "kvm_api.h"
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#define MAXV 17
#define N_ITEMS (1 << 16)

static uint32_t items[N_ITEMS];
static struct {
	int n;
	_Atomic long sums[MAXV];
	_Atomic int ids[MAXV];
	_Atomic int reqids[MAXV];
} ctx;
static _Atomic long *ticks; /* shared memory: survives resets */
static volatile long sink;
static long init_mp; /* multiprocess() from main(): refused (-1) */

static void respond(const char *text)
{
	backend_response(200, "text/plain", 10, text, strlen(text));
}

static long arg_num(const char *url, const char *key, long dflt)
{
	const char *p = strstr(url, key);
	return p ? strtol(p + strlen(key), NULL, 10) : dflt;
}

static void sum_slice(void *arg)
{
	(void)arg;
	const int id = vcpuid();
	const int per = N_ITEMS / ctx.n;
	long s = 0;
	for (int i = id * per; i < (id + 1) * per; i++)
		s += items[i];
	ctx.sums[id] = s;
	ctx.ids[id] = id + 100;
	ctx.reqids[id] = vcpureqid();
}

static long args_seen[MAXV][4];
static void four_args(long a, long b, long c, long d)
{
	const int id = vcpuid();
	args_seen[id][0] = a;
	args_seen[id][1] = b;
	args_seen[id][2] = c;
	args_seen[id][3] = d;
}

struct elem {
	long in;
	long out;
	int vcpu;
};
static struct elem elems[MAXV];
static void square(void *p, size_t size)
{
	struct elem *e = p;
	e->out = e->in * e->in + (long)size;
	e->vcpu = vcpuid();
}

/* vcpuid() is declared const: the compiler may evaluate it once, even before
   multiprocess_clone(). Code that runs on both sides of a clone reads %gs:0 itself. */
static int my_vcpu(void)
{
	int v;
	__asm__ volatile("movl %%gs:0, %0" : "=r"(v));
	return v;
}

static char prot_page[4096] __attribute__((aligned(4096)));
static _Atomic long clone_total;
static _Atomic int clone_count;
static char clone_stacks[4][64 * 1024] __attribute__((aligned(16)));

static void spin_forever(void *arg)
{
	(void)arg;
	for (;;)
		__asm__ volatile("pause");
}
static void spin_ticks(void *arg)
{
	(void)arg;
	for (;;)
		atomic_fetch_add(ticks, 1);
}
static volatile long *volatile bad_ptr = (volatile long *)0x10;
static void crash_worker(void *arg)
{
	(void)arg;
	if (vcpuid() == 2)
		sink = *bad_ptr;
}
static void syscall_worker(void *arg)
{
	(void)arg;
	write(1, "x\n", 2);
}
static void hypercall_worker(void *arg)
{
	(void)arg;
	sink = sys_is_storage();
}
static void recursive_worker(void *arg)
{
	(void)arg;
	sink = multiprocess(2, spin_forever, NULL);
}
static _Atomic int yields;
static void yield_worker(void *arg)
{
	(void)arg;
	for (int i = 0; i < 3; i++)
		sched_yield();
	atomic_fetch_add(&yields, 1);
}
static uint64_t tsc[MAXV][2];
static void bench_worker(void *arg)
{
	const long units = (long)arg;
	tsc[vcpuid()][0] = __builtin_ia32_rdtsc();
	uint64_t x = 88172645463325252ull + (uint64_t)vcpuid();
	for (long i = 0; i < units * 1000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
	}
	ctx.sums[vcpuid()] = (long)(x & 0xFFFF);
	tsc[vcpuid()][1] = __builtin_ia32_rdtsc();
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char out[1024];
	memset(&ctx, 0, sizeof(ctx));
	if (strstr(url, "/sum")) {
		ctx.n = (int)arg_num(url, "n=", 4);
		const long r = multiprocess(ctx.n, sum_slice, NULL);
		sum_slice(NULL);
		const long w = multiprocess_wait();
		long total = 0;
		int len = 0;
		for (int i = 0; i < ctx.n; i++)
			total += ctx.sums[i];
		len += snprintf(out + len, sizeof(out) - len, "r %ld w %ld sum %ld ids", r, w, total);
		for (int i = 0; i < ctx.n; i++)
			len += snprintf(out + len, sizeof(out) - len, " %d", ctx.ids[i]);
		int same = 1;
		for (int i = 0; i < ctx.n; i++)
			same &= ctx.reqids[i] == vcpureqid();
		snprintf(out + len, sizeof(out) - len, " reqid_same %d", same);
	} else if (strstr(url, "/args")) {
		memset(args_seen, 0, sizeof(args_seen));
		long (*mp4)(size_t, void (*)(long, long, long, long), long, long, long, long) =
			(void *)multiprocess;
		const long r = mp4(3, four_args, 11, 22, 33, 44);
		const long w = multiprocess_wait();
		snprintf(out, sizeof(out), "r %ld w %ld v1 %ld %ld %ld %ld v2 %ld %ld %ld %ld", r, w,
			args_seen[1][0], args_seen[1][1], args_seen[1][2], args_seen[1][3],
			args_seen[2][0], args_seen[2][1], args_seen[2][2], args_seen[2][3]);
	} else if (strstr(url, "/array")) {
		for (int i = 0; i < 4; i++)
			elems[i] = (struct elem){ .in = i + 2, .out = -1, .vcpu = -1 };
		const long r = multiprocess_array(4, (multiprocess_array_t)(void (*)(void))square, elems,
			sizeof(elems[0]));
		square(&elems[0], sizeof(elems[0]));
		const long w = multiprocess_wait();
		int len = snprintf(out, sizeof(out), "r %ld w %ld", r, w);
		for (int i = 0; i < 4; i++)
			len += snprintf(out + len, sizeof(out) - len, " [%ld %d]", elems[i].out,
				elems[i].vcpu);
	} else if (strstr(url, "/clone")) {
		clone_total = 0;
		clone_count = 0;
		const long r = multiprocess_clone(4, clone_stacks, sizeof(clone_stacks[0]));
		/* Every vCPU runs this: globals only (the stack is another one on each). */
		atomic_fetch_add(&clone_total, my_vcpu() + 1);
		atomic_fetch_add(&clone_count, 1);
		if (my_vcpu() != 0)
			multiprocess_wait(); /* a worker ends here */
		const long w = multiprocess_wait();
		snprintf(out, sizeof(out), "r %ld w %ld total %ld count %d", r, w,
			(long)clone_total, (int)clone_count);
	} else if (strstr(url, "/refused")) {
		long r[8];
		r[0] = multiprocess(1, sum_slice, NULL);                     /* n < 2 */
		r[1] = multiprocess(99, sum_slice, NULL);                    /* over smp */
		r[2] = multiprocess(2, (multiprocess_t)0x10, NULL);          /* not user memory */
		r[3] = multiprocess(2, (multiprocess_t)(1ul << 46), NULL);   /* beyond memory */
		r[4] = multiprocess_clone(2, (void *)0x1000, 65536);         /* system area */
		r[5] = multiprocess_clone(2, clone_stacks, 16);              /* tiny stacks */
		ctx.n = 2;
		r[6] = multiprocess(2, sum_slice, NULL);
		r[7] = multiprocess(2, sum_slice, NULL);                     /* still active */
		const long w = multiprocess_wait();
		const long w2 = multiprocess_wait(); /* nothing running */
		snprintf(out, sizeof(out), "%ld %ld %ld %ld %ld %ld %ld %ld w %ld %ld id %d", r[0], r[1],
			r[2], r[3], r[4], r[5], r[6], r[7], w, w2, ctx.ids[1]);
	} else if (strstr(url, "/bench")) {
		const int n = (int)arg_num(url, "n=", 1);
		const long units = arg_num(url, "w=", 1000);
		if (n > 1)
			multiprocess(n, bench_worker, (void *)(units / n));
		bench_worker((void *)(units / n));
		multiprocess_wait();
		/* Each vCPU's [start, end] in TSC ticks relative to vCPU 0's start. */
		int len = snprintf(out, sizeof(out), "ok %d", n);
		for (int i = 0; i < n; i++)
			len += snprintf(out + len, sizeof(out) - len, " [%ld %ld]",
				(long)(tsc[i][0] - tsc[0][0]) / 1000000, (long)(tsc[i][1] - tsc[0][0]) / 1000000);
	} else if (strstr(url, "/loop")) {
		multiprocess(3, spin_forever, NULL);
		multiprocess_wait();
		snprintf(out, sizeof(out), "waited for endless workers?");
	} else if (strstr(url, "/badfn")) {
		/* In the program's memory, but data: the worker faults fetching it. */
		multiprocess(2, (multiprocess_t)(void *)items, NULL);
		multiprocess_wait();
		snprintf(out, sizeof(out), "ran data as code?");
	} else if (strstr(url, "/crash")) {
		multiprocess(3, crash_worker, NULL);
		multiprocess_wait();
		snprintf(out, sizeof(out), "survived a crashing worker?");
	} else if (strstr(url, "/syscall")) {
		multiprocess(2, syscall_worker, NULL);
		multiprocess_wait();
		snprintf(out, sizeof(out), "a worker made a system call?");
	} else if (strstr(url, "/hypercall")) {
		multiprocess(2, hypercall_worker, NULL);
		multiprocess_wait();
		snprintf(out, sizeof(out), "a worker made a kvm_api call?");
	} else if (strstr(url, "/recursive")) {
		multiprocess(2, recursive_worker, NULL);
		multiprocess_wait();
		snprintf(out, sizeof(out), "a worker started workers?");
	} else if (strstr(url, "/mprotect")) {
		multiprocess(2, spin_forever, NULL);
		mprotect(prot_page, 4096, PROT_READ);
		snprintf(out, sizeof(out), "changed protections under workers?");
	} else if (strstr(url, "/exit")) {
		multiprocess(3, spin_ticks, NULL);
		_exit(3);
	} else if (strstr(url, "/nowait")) {
		const long before = *ticks;
		multiprocess(3, spin_ticks, NULL);
		/* Answer once the workers are counting (bounded: a worker that never ran fails). */
		long spins = 0;
		while (*ticks == before && spins < 4000000000l)
			spins++;
		snprintf(out, sizeof(out), "answered %s", *ticks != before ? "while counting" : "idle");
	} else if (strstr(url, "/ticks")) {
		const long a = *ticks;
		struct timespec ts = { 0, 30 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		const long b = *ticks;
		if (a == b)
			snprintf(out, sizeof(out), "still %d", a > 0);
		else
			snprintf(out, sizeof(out), "moving %ld %ld", a, b);
	} else if (strstr(url, "/yield")) {
		yields = 0;
		multiprocess(3, yield_worker, NULL);
		multiprocess_wait();
		snprintf(out, sizeof(out), "yields %d", (int)yields);
	} else {
		snprintf(out, sizeof(out), "vcpuid %d init %ld", vcpuid(), init_mp);
	}
	respond(out);
}

int main(void)
{
	for (int i = 0; i < N_ITEMS; i++)
		items[i] = (uint32_t)(i % 1000);
	ticks = (_Atomic long *)SHM_ALLOC_TYPE(long);
	ctx.n = 2;
	init_mp = multiprocess(2, sum_slice, NULL);
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
