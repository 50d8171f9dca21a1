/* vdso.c: time through the vDSO (tests/all/vdso.rs). Built as vdso (glibc, static),
   vdso_pie (glibc, static-pie) and vdso_musl (musl, static).

   GET /<prog>/<action>?n=N, where action is one of:
     loop        N clock_gettime(CLOCK_MONOTONIC) and N gettimeofday/time calls through the
                 C library: "auxv=A back=B mono=M0..M1 real=R" (A: AT_SYSINFO_EHDR is set;
                 B: times a monotonic reading went backwards; ns values)
     clocks      every clock id once through the library: "id:rc:sec " ...
     direct      clock_gettime(CLOCK_MONOTONIC) as a system call: "mono=M"
     rdtsc       the guest's TSC: "tsc=T"
     write_data  write to the data page (must crash)
     write_text  write to the vDSO code (must crash)
     jump        call into the middle of the vDSO's ELF header (must crash)
     host_ptr    system calls given pointers into the vDSO: their results
     clear_auxv  zero the whole auxv, then read the clock: "cleared mono=M"
     smp         4 vCPUs (multiprocess) read the monotonic clock 2000 times each; a reading
                 earlier than one another vCPU published before it counts as going back:
                 "vcpus=4 back=B inside=I" (I: every reading within the request's own) */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <elf.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char **saved_envp;

#define SMP_READS 2000
static _Atomic uint64_t smp_latest;
static _Atomic long smp_back, smp_outside;
static uint64_t smp_lo, smp_hi_bound;

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void smp_worker(void *arg)
{
	(void)arg;
	for (int i = 0; i < SMP_READS; i++) {
		const uint64_t seen = smp_latest;
		const uint64_t t = now_ns();
		if (t < seen)
			smp_back++;
		if (t < smp_lo)
			smp_outside++;
		uint64_t cur = smp_latest;
		while (cur < t && !__atomic_compare_exchange_n((uint64_t *)&smp_latest, &cur, t, 0,
							       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			;
	}
}

static uint64_t ns_of(const struct timespec *t)
{
	return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char act[32];
	char out[1024];
	action_of(url, act, sizeof(act));
	const char *np = query_param(url, "n");
	const long n = np ? atol(np) : 0;
	const unsigned long ehdr = getauxval(AT_SYSINFO_EHDR);
	if (strcmp(act, "loop") == 0) {
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		const uint64_t first = ns_of(&t);
		uint64_t last = first, back = 0;
		for (long i = 0; i < n; i++) {
			clock_gettime(CLOCK_MONOTONIC, &t);
			if (ns_of(&t) < last)
				back++;
			last = ns_of(&t);
			struct timeval tv;
			gettimeofday(&tv, NULL);
			if (time(NULL) < tv.tv_sec - 1)
				back++;
		}
		struct timespec r;
		clock_gettime(CLOCK_REALTIME, &r);
		snprintf(out, sizeof(out), "auxv=%d back=%llu mono=%llu..%llu real=%llu", ehdr != 0,
			 (unsigned long long)back, (unsigned long long)first, (unsigned long long)last,
			 (unsigned long long)ns_of(&r));
	} else if (strcmp(act, "clocks") == 0) {
		size_t o = 0;
		for (int id = -1; id <= 12; id++) {
			struct timespec t = { 0, 0 }, res = { 0, 0 };
			int rc = clock_gettime(id, &t);
			int rr = clock_getres(id, &res);
			o += snprintf(out + o, sizeof(out) - o, "%d:%d:%lld:%d:%ld ", id, rc, (long long)t.tv_sec,
				      rr, res.tv_nsec);
		}
		snprintf(out + o, sizeof(out) - o, "getcpu:%d", sched_getcpu());
	} else if (strcmp(act, "direct") == 0) {
		struct timespec t;
		syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
		snprintf(out, sizeof(out), "mono=%llu", (unsigned long long)ns_of(&t));
	} else if (strcmp(act, "rdtsc") == 0) {
		snprintf(out, sizeof(out), "tsc=%llu", (unsigned long long)__builtin_ia32_rdtsc());
	} else if (strcmp(act, "write_data") == 0) {
		*(volatile uint32_t *)(ehdr + 0x2000) = 0x12345;
		snprintf(out, sizeof(out), "wrote the data page");
	} else if (strcmp(act, "write_text") == 0) {
		*(volatile uint8_t *)(ehdr + 0x100) = 0xCC;
		snprintf(out, sizeof(out), "wrote the vDSO");
	} else if (strcmp(act, "jump") == 0) {
		void (*f)(void);
		unsigned long a = ehdr + 0x41; /* inside the ELF header */
		memcpy(&f, &a, sizeof(f));
		f();
		snprintf(out, sizeof(out), "came back");
	} else if (strcmp(act, "host_ptr") == 0) {
		/* The host never reads or writes the vDSO for a program: EFAULT. */
		long w = syscall(SYS_write, 1, (void *)ehdr, 16);
		long g = syscall(SYS_clock_gettime, CLOCK_MONOTONIC, (void *)(ehdr + 0x2000));
		long r = syscall(SYS_getrandom, (void *)(ehdr + 0x2000), 8, 0);
		snprintf(out, sizeof(out), "write=%ld gettime=%ld getrandom=%ld", w, g, r);
	} else if (strcmp(act, "smp") == 0) {
		smp_latest = 0;
		smp_back = 0;
		smp_outside = 0;
		smp_lo = now_ns();
		const long r = multiprocess(4, smp_worker, NULL);
		smp_worker(NULL);
		const long w = multiprocess_wait();
		smp_hi_bound = now_ns();
		if (smp_latest > smp_hi_bound)
			smp_outside++;
		snprintf(out, sizeof(out), "vcpus=%d back=%ld inside=%d", r == 0 && w == 0 ? 4 : 0,
			 (long)smp_back, smp_outside == 0);
	} else if (strcmp(act, "clear_auxv") == 0) {
		/* The auxv follows envp's NULL. */
		char **e = saved_envp;
		while (*e)
			e++;
		Elf64_auxv_t *av = (Elf64_auxv_t *)(e + 1);
		int k = 0;
		for (; av[k].a_type != AT_NULL; k++)
			av[k].a_type = AT_IGNORE, av[k].a_un.a_val = 0;
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		snprintf(out, sizeof(out), "cleared %d mono=%llu", k, (unsigned long long)ns_of(&t));
	} else {
		respond(404, "no such action\n");
		return;
	}
	respond(200, out);
}

int main(int argc, char **argv, char **envp)
{
	(void)argc;
	(void)argv;
	saved_envp = envp;
	/* Warm the library's vDSO pointers (and show a clock in main works). */
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
