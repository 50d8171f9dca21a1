/* faults.c: CPU faults delivered to signal handlers, and timer signals (tests/all/faults.rs).
   GET /faults/<action>:
     segv       a read of page 0: SIGSEGV SEGV_MAPERR, si_addr, trapno/err/cr2 in the ucontext;
                the handler moves RIP past the load and sets RAX (the load "returns" 0x5a)
     accerr     a read of a supervisor page: SEGV_ACCERR
     far        a read past the end of guest memory: SEGV_MAPERR at that address
     gp         a non-canonical address: #GP, SIGSEGV SI_KERNEL, si_addr 0
     ss         a non-canonical address through RBP: #SS, SIGBUS SI_KERNEL
     fpe        an integer division by zero: SIGFPE FPE_INTDIV, si_addr = RIP
     ill        ud2: SIGILL ILL_ILLOPN
     trap       int3: SIGTRAP SI_KERNEL, RIP already past it
     simd       an unmasked SSE division by zero: SIGFPE FPE_FLTDIV, left with siglongjmp
     overflow   unbounded recursion: the SIGSEGV handler runs on the sigaltstack, siglongjmp
     jumps      100 faults each left with siglongjmp (the mask restored every time)
     nested     a fault inside the SIGSEGV handler: the program ends with the crash report
     loop       a handler that returns to the faulting load unchanged: the run ends
     ignored    SIGSEGV ignored: the fault still ends the program
     wild       a handler that sends RIP to a kernel address: the program ends, not the host
     alarm      alarm(1) interrupting a sleep: SIGALRM, nanosleep returns EINTR
     itimer     setitimer(ITIMER_REAL, 2 ms period): 5 SIGALRMs while the handler counts
     posix      timer_create(CLOCK_MONOTONIC, SIGEV_SIGNAL SIGUSR1 with a value): SI_TIMER, the
                value, timer_gettime/timer_delete
     threadid   timer_create(SIGEV_THREAD_ID) aimed at a thread: the handler runs there
     sevthread  timer_create(SIGEV_THREAD), 2 ms period: glibc's helper thread takes each
                expiry with sigwaitinfo and runs the function in a new thread, 3 times
     prof       setitimer(ITIMER_PROF) while the program computes: SIGPROF arrives
     storm      a 1 ns periodic timer (raised to 1 ms) and a handler: the program still runs
     timers     timers past the limit: EAGAIN; bad arguments: EINVAL/EFAULT
     frozen     main() left a 20 ms ITIMER_REAL armed: it does not fire in requests (50 ms)
     leave      a request arms a 1 ms ITIMER_REAL and returns (the next request sees none)
     deadly     alarm() with SIGALRM's default action: the program ends with SIGALRM
     pause      pause() with no timer and no thread: reported as a deadlock */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <xmmintrin.h>

static volatile sig_atomic_t got, code, on_alt, count, skip;
static volatile long si_addr_v, trapno, err, cr2, rip_v, value, in_tid;
static char altstack[64 << 10];
static sigjmp_buf jb;

/* Records the fault, moves RIP past `skip` bytes and sets RAX to 0x5a. */
static void fixer(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;
	char local;
	got = sig;
	code = si->si_code;
	si_addr_v = (long)si->si_addr;
	trapno = uc->uc_mcontext.gregs[REG_TRAPNO];
	err = uc->uc_mcontext.gregs[REG_ERR];
	cr2 = uc->uc_mcontext.gregs[REG_CR2];
	rip_v = uc->uc_mcontext.gregs[REG_RIP];
	on_alt = &local >= altstack && &local < altstack + sizeof(altstack);
	uc->uc_mcontext.gregs[REG_RIP] += skip;
	uc->uc_mcontext.gregs[REG_RAX] = 0x5a;
}

static void jumper(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char local;
	got = sig;
	code = si->si_code;
	si_addr_v = (long)si->si_addr;
	on_alt = &local >= altstack && &local < altstack + sizeof(altstack);
	count++;
	siglongjmp(jb, 1);
}

static long load(long addr);

static void nested(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si, (void)uc;
	load(8);
}

static void returner(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si, (void)uc;
	count++;
}

static void wild(int sig, siginfo_t *si, void *ucv)
{
	(void)sig, (void)si;
	ucontext_t *uc = ucv;
	uc->uc_mcontext.gregs[REG_RIP] = (long)0xffffffff81000000ul;
}

static void counter(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	got = sig;
	code = si->si_code;
	value = si->si_value.sival_int;
	in_tid = syscall(SYS_gettid);
	count++;
}

/* mov (%rax),%eax: 2 bytes. */
static long load(long addr)
{
	long v = addr;
	__asm__ volatile("mov (%%rax), %%eax" : "+a"(v) : : "memory");
	return v;
}

/* mov (%rbp),%eax through RBP: 3 bytes (#SS for a non-canonical address). */
static long load_rbp(long addr)
{
	long v;
	__asm__ volatile("push %%rbp; mov %1, %%rbp; mov 0(%%rbp), %%eax; pop %%rbp"
			 : "=a"(v)
			 : "r"(addr)
			 : "memory");
	return v;
}

static volatile int forever = 1;

static int recurse(int n)
{
	volatile char pad[512];
	pad[0] = (char)n;
	return forever ? recurse(n + 1) + pad[0] : 0;
}

static char out[400];
static volatile int frozen_ticks;

static void ticker(int sig)
{
	(void)sig;
	frozen_ticks++;
}

static void fault_report(const char *what, long ret)
{
	snprintf(out, sizeof(out), "%s: sig %d code %d addr %#lx trapno %ld err %#lx cr2 %#lx ret %#lx",
		 what, got, code, si_addr_v, trapno, err, cr2, ret);
}

static void *idle_thread(void *arg)
{
	(void)arg;
	while (!got)
		usleep(500);
	return NULL;
}

static atomic_int sev_fired;
static volatile long sev_tid, sev_value;

static void sev_notify(union sigval v)
{
	sev_value = v.sival_int;
	sev_tid = syscall(SYS_gettid);
	atomic_fetch_add(&sev_fired, 1);
}

static void timers_action(const char *action)
{
	if (strcmp(action, "alarm") == 0) {
		install(SIGALRM, 0, counter);
		alarm(1);
		struct timespec ts = { 5, 0 }, rem = { 0, 0 };
		int r = nanosleep(&ts, &rem);
		int e = errno;
		snprintf(out, sizeof(out), "alarm: sig %d code %d sleep %d %s count %d", got, code, r,
			 r < 0 && e == EINTR ? "EINTR" : "?", count);
	} else if (strcmp(action, "itimer") == 0) {
		install(SIGALRM, 0, counter);
		struct itimerval it = { { 0, 2000 }, { 0, 2000 } };
		setitimer(ITIMER_REAL, &it, NULL);
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		t1 = t0;
		while (count < 5 && t1.tv_sec - t0.tv_sec < 3) {
			usleep(100);
			clock_gettime(CLOCK_MONOTONIC, &t1);
		}
		if (count < 5)
			fprintf(stderr, "itimer: %d signals in 3 s\n", count);
		struct itimerval cur;
		getitimer(ITIMER_REAL, &cur);
		const int armed = cur.it_interval.tv_usec == 2000;
		memset(&it, 0, sizeof(it));
		setitimer(ITIMER_REAL, &it, NULL);
		getitimer(ITIMER_REAL, &cur);
		snprintf(out, sizeof(out), "itimer: %d signals, armed %d, stopped %d", count >= 5,
			 armed, cur.it_value.tv_sec == 0 && cur.it_value.tv_usec == 0);
	} else if (strcmp(action, "posix") == 0) {
		install(SIGUSR1, 0, counter);
		struct sigevent sev;
		memset(&sev, 0, sizeof(sev));
		sev.sigev_notify = SIGEV_SIGNAL;
		sev.sigev_signo = SIGUSR1;
		sev.sigev_value.sival_int = 4242;
		timer_t t;
		int r = timer_create(CLOCK_MONOTONIC, &sev, &t);
		struct itimerspec its = { { 0, 0 }, { 0, 3000000 } };
		timer_settime(t, 0, &its, NULL);
		struct itimerspec cur;
		timer_gettime(t, &cur);
		const int pending = cur.it_value.tv_nsec > 0;
		while (!got)
			usleep(200);
		timer_gettime(t, &cur);
		const int done = cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0;
		int d = timer_delete(t);
		int d2 = timer_delete(t);
		snprintf(out, sizeof(out),
			 "posix: create %d sig %d code %d value %ld pending %d done %d delete %d again %d",
			 r, got, code, value, pending, done, d, d2 < 0 && errno == EINVAL);
	} else if (strcmp(action, "threadid") == 0) {
		install(SIGUSR2, 0, counter);
		pthread_t th;
		pthread_create(&th, NULL, idle_thread, NULL);
		usleep(1000);
		/* The thread's TID: the one the handler sees must be it. */
		long main_tid = syscall(SYS_gettid);
		struct sigevent sev;
		memset(&sev, 0, sizeof(sev));
		sev.sigev_notify = SIGEV_THREAD_ID;
		sev.sigev_signo = SIGUSR2;
		sev._sigev_un._tid = (int)main_tid + 1;
		timer_t t;
		int r = timer_create(CLOCK_MONOTONIC, &sev, &t);
		struct itimerspec its = { { 0, 0 }, { 0, 2000000 } };
		timer_settime(t, 0, &its, NULL);
		pthread_join(th, NULL);
		timer_delete(t);
		snprintf(out, sizeof(out), "threadid: create %d sig %d in the thread %d", r, got,
			 in_tid == main_tid + 1);
	} else if (strcmp(action, "sevthread") == 0) {
		long main_tid = syscall(SYS_gettid);
		struct sigevent sev;
		memset(&sev, 0, sizeof(sev));
		sev.sigev_notify = SIGEV_THREAD;
		sev.sigev_notify_function = sev_notify;
		sev.sigev_value.sival_int = 77;
		timer_t t;
		int r = timer_create(CLOCK_MONOTONIC, &sev, &t);
		struct itimerspec its = { { 0, 2000000 }, { 0, 2000000 } };
		timer_settime(t, 0, &its, NULL);
		for (int i = 0; i < 4000 && atomic_load(&sev_fired) < 3; i++)
			usleep(500);
		int d = timer_delete(t);
		snprintf(out, sizeof(out), "sevthread: create %d fired %d value %ld other thread %d delete %d",
			 r, atomic_load(&sev_fired) >= 3, sev_value, sev_tid != 0 && sev_tid != main_tid, d);
	} else if (strcmp(action, "prof") == 0) {
		install(SIGPROF, 0, counter);
		struct itimerval it = { { 0, 1000 }, { 0, 1000 } };
		setitimer(ITIMER_PROF, &it, NULL);
		volatile unsigned long x = 0;
		while (!got)
			x++;
		memset(&it, 0, sizeof(it));
		setitimer(ITIMER_PROF, &it, NULL);
		snprintf(out, sizeof(out), "prof: sig %d code %d", got, code);
	} else if (strcmp(action, "storm") == 0) {
		install(SIGALRM, 0, counter);
		struct sigevent sev;
		memset(&sev, 0, sizeof(sev));
		sev.sigev_notify = SIGEV_SIGNAL;
		sev.sigev_signo = SIGALRM;
		timer_t t;
		timer_create(CLOCK_MONOTONIC, &sev, &t);
		struct itimerspec its = { { 0, 1 }, { 0, 1 } };
		timer_settime(t, 0, &its, NULL);
		struct itimerspec cur;
		timer_gettime(t, &cur);
		/* The program keeps running: 20 ms of sleeps in small steps. */
		for (int i = 0; i < 20; i++)
			usleep(1000);
		timer_delete(t);
		snprintf(out, sizeof(out), "storm: interval %ld ns, handled some %d", cur.it_interval.tv_nsec,
			 count > 0);
	} else if (strcmp(action, "timers") == 0) {
		struct sigevent sev;
		memset(&sev, 0, sizeof(sev));
		sev.sigev_notify = SIGEV_NONE;
		timer_t ts[40];
		int made = 0, e = 0;
		for (int i = 0; i < 40; i++) {
			if (timer_create(CLOCK_MONOTONIC, &sev, &ts[i]) != 0) {
				e = errno;
				break;
			}
			made++;
		}
		for (int i = 0; i < made; i++)
			timer_delete(ts[i]);
		long bad_clock = syscall(SYS_timer_create, 12345, NULL, &ts[0]) < 0 ? -errno : 0;
		long bad_ptr =
			syscall(SYS_timer_create, CLOCK_MONOTONIC, (void *)16, &ts[0]) < 0 ? -errno : 0;
		long bad_which = syscall(SYS_setitimer, 7, NULL, NULL) < 0 ? -errno : 0;
		long bad_out = syscall(SYS_timer_create, CLOCK_MONOTONIC, NULL, (void *)16) < 0 ? -errno : 0;
		struct itimerspec neg = { { 0, 0 }, { 0, 2000000000 } };
		timer_t t;
		timer_create(CLOCK_MONOTONIC, &sev, &t);
		long bad_ns = timer_settime(t, 0, &neg, NULL) < 0 ? -errno : 0;
		timer_delete(t);
		snprintf(out, sizeof(out),
			 "timers: made %d then %s, clock %ld ptr %ld which %ld out %ld ns %ld", made,
			 e == EAGAIN ? "EAGAIN" : "?", bad_clock, bad_ptr, bad_which, bad_out, bad_ns);
	} else if (strcmp(action, "frozen") == 0) {
		const int before = frozen_ticks;
		for (int i = 0; i < 10; i++)
			usleep(5000);
		snprintf(out, sizeof(out), "frozen: main had ticks %d, the request %d", before > 0,
			 frozen_ticks - before);
	} else if (strcmp(action, "leave") == 0) {
		signal(SIGALRM, ticker);
		struct itimerval it = { { 0, 1000 }, { 0, 1000 } };
		setitimer(ITIMER_REAL, &it, NULL);
		snprintf(out, sizeof(out), "leave: armed");
	} else if (strcmp(action, "deadly") == 0) {
		signal(SIGALRM, SIG_DFL);
		alarm(1);
		pause();
		snprintf(out, sizeof(out), "FAIL: survived SIGALRM");
	} else if (strcmp(action, "pause") == 0) {
		pause();
		snprintf(out, sizeof(out), "FAIL: pause returned");
	} else {
		snprintf(out, sizeof(out), "unknown action");
	}
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32];
	action_of(url, action, sizeof(action));
	got = code = count = 0;
	si_addr_v = trapno = err = cr2 = 0;
	if (strcmp(action, "segv") == 0) {
		install(SIGSEGV, 0, fixer);
		skip = 2;
		long r = load(0x10);
		fault_report("segv", r);
	} else if (strcmp(action, "accerr") == 0) {
		install(SIGSEGV, 0, fixer);
		skip = 2;
		long r = load(0x3000);
		fault_report("accerr", r);
	} else if (strcmp(action, "far") == 0) {
		install(SIGSEGV, 0, fixer);
		skip = 2;
		long r = load(1l << 45);
		fault_report("far", r);
	} else if (strcmp(action, "gp") == 0) {
		install(SIGSEGV, 0, fixer);
		skip = 2;
		long r = load((long)0x8000000000000000ul);
		fault_report("gp", r);
	} else if (strcmp(action, "ss") == 0) {
		/* #SS on CPUs; QEMU's software CPU raises #GP for every non-canonical address. */
		install(SIGBUS, 0, fixer);
		install(SIGSEGV, 0, fixer);
		skip = 3;
		long r = load_rbp((long)0x8000000000000000ul);
		fault_report("ss", r);
	} else if (strcmp(action, "fpe") == 0) {
		install(SIGFPE, 0, fixer);
		skip = 3;
		long r;
		__asm__ volatile("xor %%edx,%%edx; mov $7,%%eax; div %%rcx" : "=a"(r) : "c"(0l) : "rdx");
		fault_report("fpe", r);
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " at rip %d",
			 si_addr_v == rip_v);
	} else if (strcmp(action, "ill") == 0) {
		install(SIGILL, 0, fixer);
		skip = 2;
		long r;
		__asm__ volatile("mov $1,%%eax; ud2" : "=a"(r));
		fault_report("ill", r);
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " at rip %d",
			 si_addr_v == rip_v);
	} else if (strcmp(action, "trap") == 0) {
		install(SIGTRAP, 0, fixer);
		skip = 0;
		long r;
		__asm__ volatile("mov $1,%%eax; int3" : "=a"(r));
		fault_report("trap", r);
	} else if (strcmp(action, "simd") == 0) {
		install(SIGFPE, 0, jumper);
		const unsigned csr = _mm_getcsr();
		volatile double one = 1.0, zero = 0.0, q = 0;
		if (sigsetjmp(jb, 1) == 0) {
			_mm_setcsr(csr & ~(1u << 9)); /* unmask divide-by-zero */
			q = one / zero;
		}
		const unsigned after = _mm_getcsr();
		_mm_setcsr(csr);
		snprintf(out, sizeof(out), "simd: sig %d code %d q %g csr restored by handler entry %d",
			 got, code, q, (after & (1u << 9)) != 0);
	} else if (strcmp(action, "overflow") == 0) {
		stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 };
		sigaltstack(&ss, NULL);
		install(SIGSEGV, SA_ONSTACK, jumper);
		if (sigsetjmp(jb, 1) == 0)
			recurse(0);
		snprintf(out, sizeof(out), "overflow: sig %d code %d on_alt %d", got, code, on_alt);
	} else if (strcmp(action, "jumps") == 0) {
		install(SIGSEGV, 0, jumper);
		for (volatile int i = 0; i < 100; i++)
			if (sigsetjmp(jb, 1) == 0)
				load(0x20 + i);
		sigset_t cur;
		sigprocmask(SIG_BLOCK, NULL, &cur);
		snprintf(out, sizeof(out), "jumps: %d faults, addr %#lx, blocked after %d", count,
			 si_addr_v, sigismember(&cur, SIGSEGV));
	} else if (strcmp(action, "nested") == 0) {
		install(SIGSEGV, 0, nested);
		load(0x10);
		snprintf(out, sizeof(out), "FAIL: survived a fault in its handler");
	} else if (strcmp(action, "loop") == 0) {
		install(SIGSEGV, 0, returner);
		load(0x10);
		snprintf(out, sizeof(out), "FAIL: the fault went away");
	} else if (strcmp(action, "ignored") == 0) {
		signal(SIGSEGV, SIG_IGN);
		load(0x10);
		snprintf(out, sizeof(out), "FAIL: an ignored fault went on");
	} else if (strcmp(action, "wild") == 0) {
		install(SIGSEGV, SA_NODEFER, wild);
		load(0x10);
		snprintf(out, sizeof(out), "FAIL: came back from a kernel address");
	} else {
		timers_action(action);
	}
	respond(200, out);
}

int main(void)
{
	/* A periodic timer armed before the freeze: requests never see it fire. */
	signal(SIGALRM, ticker);
	struct itimerval it = { { 0, 20000 }, { 0, 20000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	while (frozen_ticks < 1)
		usleep(1000);
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
