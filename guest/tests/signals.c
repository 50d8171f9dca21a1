/* signals.c: signal handlers inside a VM (tests/all/threads.rs). GET /signals/<action>:
     raise      raise(SIGUSR1) with an SA_SIGINFO handler (glibc blocks every signal around
                its tgkill: the signal waits until the mask is restored)
     altstack   the handler runs on the sigaltstack stack (SA_ONSTACK)
     mask       SIGUSR2 blocked, sent, then unblocked: delivered only then
     thread     pthread_kill(SIGUSR1) to a sleeping thread: its handler runs in that thread
     storm      500 raise()s: every one handled
     fpu        a handler doing floating-point work leaves the interrupted code's intact
     default    kill(getpid(), SIGTERM) with no handler: the program ends with it
     badstack   an alternate stack outside memory: the program ends with SIGSEGV
     sigsuspend rt_sigsuspend with SIGUSR1 blocked: another thread's signal ends it (EINTR),
                the handler ran, the mask is back
     pwaits     ppoll, pselect6 and epoll_pwait on a pipe nobody writes, with SIGUSR1 blocked
                and an empty mask for the call: another thread's signal ends each with EINTR
                after its handler, the mask is back; a call mask that blocks a signal keeps
                it pending: the call times out (0), the handler runs as it returns
     sigwait    sigwaitinfo takes a blocked signal another thread sends (no handler runs),
                sigtimedwait times out with EAGAIN
     hostile    bad masks, sizes and pointers: EFAULT/EINVAL, the program goes on */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile sig_atomic_t got, last_code, on_alt, in_tid;
static char altstack[64 << 10];
static atomic_int handled;

static void handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char local;
	got = sig;
	last_code = si->si_code;
	on_alt = &local >= altstack && &local < altstack + sizeof(altstack);
	in_tid = (int)syscall(SYS_gettid);
	atomic_fetch_add(&handled, 1);
}

static void install(int sig, int flags, void (*h)(int, siginfo_t *, void *))
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = h;
	sa.sa_flags = SA_SIGINFO | flags;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
}

static void *sleeper(void *arg)
{
	(void)arg;
	while (!got)
		usleep(1000);
	return (void *)(long)syscall(SYS_gettid);
}

static volatile double fa = 1.5;

static void fpu_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)si, (void)uc;
	volatile double x = 3.0;
	for (int i = 0; i < 100; i++)
		x = x * 1.25 - 0.5;
	got = (int)x;
}

static pthread_t target;
static int target_sig;

/* Sends target_sig to `target` after 3 ms (the target waits meanwhile). */
static void *killer(void *arg)
{
	(void)arg;
	usleep(3000);
	pthread_kill(target, target_sig);
	return NULL;
}

static pthread_t kill_soon(int sig)
{
	pthread_t t;
	target = pthread_self();
	target_sig = sig;
	pthread_create(&t, NULL, killer, NULL);
	return t;
}

static int blocked(int sig)
{
	sigset_t now;
	sigprocmask(SIG_BLOCK, NULL, &now);
	return sigismember(&now, sig);
}

static void block(int sig, int how)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, sig);
	sigprocmask(how, &s, NULL);
}

/* One waiting call with an empty call mask while SIGUSR1 is blocked. */
static void pwait_one(const char *what, char *out, size_t len)
{
	int p[2];
	pipe(p);
	got = 0;
	pthread_t t = kill_soon(SIGUSR1);
	sigset_t none;
	sigemptyset(&none);
	int r = -2;
	if (strcmp(what, "ppoll") == 0) {
		struct pollfd pf = { .fd = p[0], .events = POLLIN };
		struct timespec ts = { .tv_sec = 5 };
		r = ppoll(&pf, 1, &ts, &none);
	} else if (strcmp(what, "pselect") == 0) {
		fd_set rd;
		FD_ZERO(&rd);
		FD_SET(p[0], &rd);
		struct timespec ts = { .tv_sec = 5 };
		r = pselect(p[0] + 1, &rd, NULL, NULL, &ts, &none);
	} else {
		int ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN };
		epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
		r = epoll_pwait(ep, &ev, 1, 5000, &none);
		close(ep);
	}
	int e = errno;
	pthread_join(t, NULL);
	snprintf(out + strlen(out), len - strlen(out), " %s %d %s got %d blocked %d;", what, r,
		 e == EINTR ? "EINTR" : "?", got, blocked(SIGUSR1));
	close(p[0]);
	close(p[1]);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32], out[200];
	action_of(url, action, sizeof(action));
	got = 0;
	if (strcmp(action, "raise") == 0) {
		install(SIGUSR1, 0, handler);
		raise(SIGUSR1);
		snprintf(out, sizeof(out), "raise: got %d code %d on_alt %d", got, last_code, on_alt);
	} else if (strcmp(action, "altstack") == 0) {
		stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 };
		sigaltstack(&ss, NULL);
		install(SIGUSR1, SA_ONSTACK, handler);
		raise(SIGUSR1);
		stack_t old;
		sigaltstack(NULL, &old);
		snprintf(out, sizeof(out), "altstack: got %d on_alt %d size %zu", got, on_alt,
			 old.ss_size);
	} else if (strcmp(action, "mask") == 0) {
		install(SIGUSR2, 0, handler);
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGUSR2);
		sigprocmask(SIG_BLOCK, &s, NULL);
		kill(getpid(), SIGUSR2);
		const int before = got;
		sigprocmask(SIG_UNBLOCK, &s, NULL);
		snprintf(out, sizeof(out), "mask: before %d after %d code %d", before, got, last_code);
	} else if (strcmp(action, "thread") == 0) {
		install(SIGUSR1, 0, handler);
		pthread_t t;
		void *tid;
		pthread_create(&t, NULL, sleeper, NULL);
		usleep(2000);
		pthread_kill(t, SIGUSR1);
		pthread_join(t, &tid);
		snprintf(out, sizeof(out), "thread: got %d in the thread %d", got,
			 in_tid == (long)tid);
	} else if (strcmp(action, "storm") == 0) {
		install(SIGUSR1, 0, handler);
		atomic_store(&handled, 0);
		for (int i = 0; i < 500; i++)
			raise(SIGUSR1);
		snprintf(out, sizeof(out), "storm: %d handled", atomic_load(&handled));
	} else if (strcmp(action, "fpu") == 0) {
		install(SIGUSR1, 0, fpu_handler);
		double a = fa * 3.0;
		raise(SIGUSR1);
		double b = fa * 3.0;
		snprintf(out, sizeof(out), "fpu: %s, handler %d", a == b && a == 4.5 ? "intact" : "BROKEN",
			 got != 0);
	} else if (strcmp(action, "default") == 0) {
		kill(getpid(), SIGTERM);
		snprintf(out, sizeof(out), "FAIL: survived SIGTERM");
	} else if (strcmp(action, "badstack") == 0) {
		stack_t ss = { .ss_sp = (void *)(1ul << 46), .ss_size = 1 << 20, .ss_flags = 0 };
		sigaltstack(&ss, NULL);
		install(SIGUSR1, SA_ONSTACK, handler);
		raise(SIGUSR1);
		snprintf(out, sizeof(out), "FAIL: handler ran on a stack outside memory");
	} else if (strcmp(action, "sigsuspend") == 0) {
		install(SIGUSR1, 0, handler);
		block(SIGUSR1, SIG_BLOCK);
		pthread_t t = kill_soon(SIGUSR1);
		sigset_t none;
		sigemptyset(&none);
		int r = sigsuspend(&none);
		int e = errno;
		pthread_join(t, NULL);
		snprintf(out, sizeof(out), "sigsuspend: %d %s got %d blocked %d", r,
			 e == EINTR ? "EINTR" : "?", got, blocked(SIGUSR1));
		block(SIGUSR1, SIG_UNBLOCK);
	} else if (strcmp(action, "pwaits") == 0) {
		install(SIGUSR1, 0, handler);
		install(SIGUSR2, 0, handler);
		block(SIGUSR1, SIG_BLOCK);
		snprintf(out, sizeof(out), "pwaits:");
		pwait_one("ppoll", out, sizeof(out));
		pwait_one("pselect", out, sizeof(out));
		pwait_one("epoll_pwait", out, sizeof(out));
		block(SIGUSR1, SIG_UNBLOCK);
		/* The call's mask blocks SIGUSR2: the wait runs to its timeout, the signal after. */
		got = 0;
		pthread_t t = kill_soon(SIGUSR2);
		sigset_t only2;
		sigemptyset(&only2);
		sigaddset(&only2, SIGUSR2);
		struct timespec ts = { .tv_nsec = 50 * 1000 * 1000 };
		int r = ppoll(NULL, 0, &ts, &only2);
		int during = got;
		pthread_join(t, NULL);
		snprintf(out + strlen(out), sizeof(out) - strlen(out), " masked %d during %d after %d",
			 r, during, got);
	} else if (strcmp(action, "sigwait") == 0) {
		install(SIGUSR2, 0, handler);
		block(SIGUSR2, SIG_BLOCK);
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, SIGUSR2);
		pthread_t t = kill_soon(SIGUSR2);
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		int r = sigwaitinfo(&s, &si);
		int code = si.si_code;
		pthread_join(t, NULL);
		struct timespec ts = { .tv_nsec = 20 * 1000 * 1000 };
		int r2 = sigtimedwait(&s, NULL, &ts);
		int e2 = errno;
		raise(SIGUSR2);
		int r3 = sigtimedwait(&s, &si, &ts);
		snprintf(out, sizeof(out), "sigwait: %d code %d handler %d; timeout %d %s; raised %d",
			 r, code, got, r2, e2 == EAGAIN ? "EAGAIN" : "?", r3);
		block(SIGUSR2, SIG_UNBLOCK);
	} else if (strcmp(action, "hostile") == 0) {
		sigset_t s;
		sigemptyset(&s);
		struct timespec ts = { 0, 0 }, bad = { 0, -1 };
		long a = syscall(SYS_rt_sigsuspend, (void *)8, 8);
		int ea = errno;
		long b = syscall(SYS_rt_sigsuspend, &s, 4);
		int eb = errno;
		long c = syscall(SYS_ppoll, NULL, 0, &ts, (void *)16, 8);
		int ec = errno;
		long d = syscall(SYS_ppoll, NULL, 0, &ts, &s, 99);
		int ed = errno;
		long e = syscall(SYS_rt_sigtimedwait, &s, NULL, &bad, 8);
		int ee = errno;
		long f = syscall(SYS_rt_sigtimedwait, (void *)~0ul, NULL, &ts, 8);
		int ef = errno;
		long g = syscall(SYS_pselect6, 0, NULL, NULL, NULL, &ts, (void *)24);
		int eg = errno;
		snprintf(out, sizeof(out), "hostile: %ld %d %ld %d %ld %d %ld %d %ld %d %ld %d %ld %d", a,
			 ea == EFAULT, b, eb == EINVAL, c, ec == EFAULT, d, ed == EINVAL, e,
			 ee == EINVAL, f, ef == EFAULT, g, eg == EFAULT);
	} else {
		snprintf(out, sizeof(out), "unknown action");
	}
	respond(200, out);
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
