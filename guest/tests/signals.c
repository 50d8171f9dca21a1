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
     signalfd   signalfd4: blocked signals read as signalfd_siginfo (nonblocking EAGAIN, poll,
                epoll, a blocking read another thread's signal ends, a changed mask, two
                signals in one read, the handler never runs); bad arguments EINVAL/EFAULT
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
#include <sys/signalfd.h>
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
	} else if (strcmp(action, "signalfd") == 0) {
		install(SIGUSR1, 0, handler);
		install(SIGUSR2, 0, handler);
		block(SIGUSR1, SIG_BLOCK);
		block(SIGUSR2, SIG_BLOCK);
		sigset_t s2, s1, both;
		sigemptyset(&s2);
		sigaddset(&s2, SIGUSR2);
		sigemptyset(&s1);
		sigaddset(&s1, SIGUSR1);
		both = s1;
		sigaddset(&both, SIGUSR2);
		struct signalfd_siginfo si[2];
		int fd = signalfd(-1, &s2, SFD_NONBLOCK | SFD_CLOEXEC);
		long empty = read(fd, si, sizeof(si[0]));
		int e_empty = errno;
		raise(SIGUSR2);
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int p1 = poll(&pf, 1, 0);
		long n1 = read(fd, si, sizeof(si[0]));
		int sig1 = si[0].ssi_signo, code1 = si[0].ssi_code;
		int p2 = poll(&pf, 1, 0);
		/* A blocking signalfd: the read waits until another thread's signal arrives. */
		int bfd = signalfd(-1, &s2, 0);
		pthread_t t = kill_soon(SIGUSR2);
		long n2 = read(bfd, si, sizeof(si));
		int sig2 = si[0].ssi_signo;
		pthread_join(t, NULL);
		/* epoll sees it. */
		int ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = 7 };
		epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
		int w0 = epoll_wait(ep, &ev, 1, 0);
		raise(SIGUSR2);
		int w1 = epoll_wait(ep, &ev, 1, 0);
		read(fd, si, sizeof(si[0]));
		/* The mask changed in place; two signals in one read. */
		int same = signalfd(fd, &both, 0) == fd;
		raise(SIGUSR1);
		raise(SIGUSR2);
		long n3 = read(fd, si, sizeof(si));
		int a3 = si[0].ssi_signo, b3 = si[1].ssi_signo;
		/* Bad arguments. */
		int bad_size = syscall(SYS_signalfd4, -1, &s2, 4, 0) < 0 && errno == EINVAL;
		int bad_ptr = syscall(SYS_signalfd4, -1, (void *)8, 8, 0) < 0 && errno == EFAULT;
		int bad_flags = syscall(SYS_signalfd4, -1, &s2, 8, 1) < 0 && errno == EINVAL;
		int not_sfd = signalfd(ep, &s2, 0) < 0 && errno == EINVAL;
		raise(SIGUSR2);
		int short_buf = read(fd, si, 64) < 0 && errno == EINVAL;
		int bad_buf = syscall(SYS_read, fd, (void *)8, sizeof(si[0])) < 0 && errno == EFAULT;
		close(ep);
		close(bfd);
		close(fd);
		/* Whatever is still pending stays blocked; drop it before unblocking. */
		struct timespec zero = { 0, 0 };
		while (sigtimedwait(&both, NULL, &zero) > 0)
			;
		block(SIGUSR1, SIG_UNBLOCK);
		block(SIGUSR2, SIG_UNBLOCK);
		snprintf(out, sizeof(out),
			 "signalfd: empty %ld %s; poll %d read %ld sig %d code %d poll %d; blocking %ld sig %d; "
			 "epoll %d %d; mask %d read %ld sigs %d %d; bad %d %d %d %d %d %d; handler %d",
			 empty, e_empty == EAGAIN ? "EAGAIN" : "?", p1, n1, sig1, code1, p2, n2, sig2, w0, w1,
			 same, n3, a3, b3, bad_size, bad_ptr, bad_flags, not_sfd, short_buf, bad_buf, got);
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
