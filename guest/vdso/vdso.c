/*
 * edgevm's vDSO: the time calls of a guest answered inside the VM, without a VM exit.
 *
 * Built by crates/edgevm-kvm/build.rs (gcc -nostdlib -shared, vdso.lds) and embedded in the
 * server; mapped read+execute into every VM at VDSO_ADDR, next to the data page at VVAR_ADDR
 * (read-only to the guest), which a host thread keeps current (crates/edgevm-kvm/src/vdso.rs,
 * docs/DESIGN.md "vDSO"). Time = the guest's TSC (equal to the host's: edgevm sets every
 * vCPU's TSC offset to 0) converted with the page's base and multiplier under a sequence
 * counter. Whatever the page cannot answer (CPU-time clocks, unknown clocks, a page in
 * fallback mode) is the real system call, as with Linux's vDSO.
 *
 * The numbers below are the host's (crates/edgevm-kvm/src/vdso.rs): change both together.
 */
#include <stddef.h>
#include <stdint.h>

#define VDSO_ADDR 0x7fffe02000UL
#define VVAR_ADDR 0x7fffe04000UL

#define MODE_TSC 1

struct vdso_page {
	uint32_t seq;      /* odd while the host writes */
	uint32_t mode;     /* MODE_TSC, or 0: every call is the system call */
	uint64_t tsc_base; /* TSC at which mono_ns and raw_ns hold */
	uint64_t mono_ns;  /* CLOCK_MONOTONIC at tsc_base */
	uint64_t mult;     /* ns = (tsc - tsc_base) * mult >> shift */
	uint32_t shift;
	uint32_t pad;
	int64_t real_off;  /* CLOCK_REALTIME - CLOCK_MONOTONIC */
	int64_t boot_off;  /* CLOCK_BOOTTIME - CLOCK_MONOTONIC */
	int64_t tai_off;   /* CLOCK_TAI - CLOCK_MONOTONIC */
	uint64_t raw_ns;   /* CLOCK_MONOTONIC_RAW at tsc_base */
	uint64_t raw_mult; /* same shift */
};
_Static_assert(offsetof(struct vdso_page, tsc_base) == 8, "layout");
_Static_assert(offsetof(struct vdso_page, mult) == 24, "layout");
_Static_assert(offsetof(struct vdso_page, real_off) == 40, "layout");
_Static_assert(offsetof(struct vdso_page, raw_mult) == 72, "layout");

struct timespec_k {
	int64_t tv_sec;
	int64_t tv_nsec;
};
struct timeval_k {
	int64_t tv_sec;
	int64_t tv_usec;
};

#define vvar ((const volatile struct vdso_page *)VVAR_ADDR)

static long sys2(long nr, long a, long b)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "0"(nr), "D"(a), "S"(b) : "rcx", "r11", "memory");
	return r;
}

static long sys3(long nr, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "0"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return r;
}

#define SYS_gettimeofday 96
#define SYS_time 201
#define SYS_clock_gettime 228
#define SYS_clock_getres 229
#define SYS_getcpu 309

static inline uint64_t rdtsc_ordered(void)
{
	uint32_t lo, hi;
	/* lfence: the TSC is read after the sequence count (as Linux's rdtsc_ordered). */
	__asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
	return ((uint64_t)hi << 32) | lo;
}

enum which { MONO, RAW };

/* Nanoseconds of the clock `w` plus `off` (the offset field at `off_at`, if any).
 * Returns 0 when the page is in fallback mode. */
static int read_ns(enum which w, size_t off_at, uint64_t *out)
{
	uint32_t s;
	uint64_t ns;
	do {
		while ((s = vvar->seq) & 1)
			__builtin_ia32_pause();
		__asm__ volatile("" ::: "memory");
		if (vvar->mode != MODE_TSC)
			return 0;
		uint64_t base = vvar->tsc_base;
		uint64_t mult = w == RAW ? vvar->raw_mult : vvar->mult;
		uint32_t shift = vvar->shift;
		ns = w == RAW ? vvar->raw_ns : vvar->mono_ns;
		if (off_at)
			ns += *(const volatile uint64_t *)(VVAR_ADDR + off_at);
		uint64_t t = rdtsc_ordered();
		/* A TSC behind the base (never expected: one host TSC for every vCPU) counts as 0. */
		uint64_t delta = t > base ? t - base : 0;
		ns += (uint64_t)(((unsigned __int128)delta * mult) >> shift);
		__asm__ volatile("" ::: "memory");
	} while (vvar->seq != s);
	*out = ns;
	return 1;
}

static int clock_ns(long clk, uint64_t *ns)
{
	switch (clk) {
	case 0: /* CLOCK_REALTIME */
	case 5: /* CLOCK_REALTIME_COARSE */
		return read_ns(MONO, offsetof(struct vdso_page, real_off), ns);
	case 1: /* CLOCK_MONOTONIC */
	case 6: /* CLOCK_MONOTONIC_COARSE */
		return read_ns(MONO, 0, ns);
	case 4: /* CLOCK_MONOTONIC_RAW */
		return read_ns(RAW, 0, ns);
	case 7: /* CLOCK_BOOTTIME */
		return read_ns(MONO, offsetof(struct vdso_page, boot_off), ns);
	case 11: /* CLOCK_TAI */
		return read_ns(MONO, offsetof(struct vdso_page, tai_off), ns);
	default: /* CPU-time clocks, alarms, per-process clocks: the system call */
		return 0;
	}
}

int __vdso_clock_gettime(long clk, struct timespec_k *ts)
{
	uint64_t ns;
	if (!clock_ns(clk, &ns))
		return sys2(SYS_clock_gettime, clk, (long)ts);
	ts->tv_sec = ns / 1000000000;
	ts->tv_nsec = ns % 1000000000;
	return 0;
}

int __vdso_gettimeofday(struct timeval_k *tv, void *tz)
{
	uint64_t ns;
	if (!clock_ns(0, &ns))
		return sys2(SYS_gettimeofday, (long)tv, (long)tz);
	if (tv) {
		tv->tv_sec = ns / 1000000000;
		tv->tv_usec = ns % 1000000000 / 1000;
	}
	if (tz) {
		((int32_t *)tz)[0] = 0;
		((int32_t *)tz)[1] = 0;
	}
	return 0;
}

long __vdso_time(long *t)
{
	uint64_t ns;
	if (!clock_ns(0, &ns))
		return sys2(SYS_time, (long)t, 0);
	long s = ns / 1000000000;
	if (t)
		*t = s;
	return s;
}

int __vdso_clock_getres(long clk, struct timespec_k *res)
{
	uint64_t ns;
	/* The clocks the page answers tick in nanoseconds; the rest ask the host. */
	if ((clk == 0 || clk == 1 || clk == 4 || clk == 7 || clk == 11) && clock_ns(clk, &ns)) {
		if (res) {
			res->tv_sec = 0;
			res->tv_nsec = 1;
		}
		return 0;
	}
	return sys2(SYS_clock_getres, clk, (long)res);
}

/* One vCPU per VM as far as a program can tell (the system call says CPU 0, node 0 too). */
int __vdso_getcpu(unsigned *cpu, unsigned *node, void *unused)
{
	(void)unused;
	if (vvar->mode != MODE_TSC)
		return sys3(SYS_getcpu, (long)cpu, (long)node, 0);
	if (cpu)
		*cpu = 0;
	if (node)
		*node = 0;
	return 0;
}

int clock_gettime(long, struct timespec_k *) __attribute__((weak, alias("__vdso_clock_gettime")));
int gettimeofday(struct timeval_k *, void *) __attribute__((weak, alias("__vdso_gettimeofday")));
long time(long *) __attribute__((weak, alias("__vdso_time")));
int clock_getres(long, struct timespec_k *) __attribute__((weak, alias("__vdso_clock_getres")));
int getcpu(unsigned *, unsigned *, void *) __attribute__((weak, alias("__vdso_getcpu")));
