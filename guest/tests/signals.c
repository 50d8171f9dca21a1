/* signals.c: signal handlers inside a VM (tests/all/threads.rs). GET /signals/<action>:
     raise      raise(SIGUSR1) with an SA_SIGINFO handler (glibc blocks every signal around
                its tgkill: the signal waits until the mask is restored)
     altstack   the handler runs on the sigaltstack stack (SA_ONSTACK)
     mask       SIGUSR2 blocked, sent, then unblocked: delivered only then
     thread     pthread_kill(SIGUSR1) to a sleeping thread: its handler runs in that thread
     storm      500 raise()s: every one handled
     fpu        a handler doing floating-point work leaves the interrupted code's intact
     default    kill(getpid(), SIGTERM) with no handler: the program ends with it
     badstack   an alternate stack outside memory: the program ends with SIGSEGV */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <pthread.h>
#include <signal.h>
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
