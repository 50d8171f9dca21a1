/* readiness.c: waiting for descriptors inside a VM (tests/all/readiness.rs).

   Requests (GET /readiness/<action>):
     pipe       a thread writes a pipe after sleeping; the main thread's blocking read waits
                for it (and a poll with a timeout, and a write to a full pipe)
     epoll      epoll over an eventfd (edge-triggered, written twice), a pipe and a periodic
                timerfd, woken by another thread; one-shot; epoll inside epoll
     select     select and pselect6: a timeout, then a ready pipe
     timeout    poll(NULL, 0, 20 ms) and epoll_wait with 10 ms: both time out
     fds        the descriptor numbers an eventfd, a timerfd and an epoll get (the same in
                every request: a request's descriptors are closed by its reset)
     forever    one thread waits on an eventfd no one else can write: a deadlock
     timeout_forever  epoll_wait(-1) while another thread sleeps forever: the request's
                timeout ends it
     hostile    bad pointers, lengths and loops: the errors
   Run with the argument "run" (edgevm run): the pipe, epoll and select checks. */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static char out[2048];

static void msleep(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

struct writer {
	int fd;
	int delay_ms;
	int times;
	uint64_t value; /* 0: write "hello" (a pipe), else 8 bytes (an eventfd) */
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	for (int i = 0; i < w->times; i++) {
		msleep(w->delay_ms);
		if (w->value == 0) {
			if (write(w->fd, "hello", 5) != 5)
				return (void *)1;
		} else if (write(w->fd, &w->value, 8) != 8) {
			return (void *)1;
		}
	}
	return NULL;
}

static void *reader_main(void *arg)
{
	static char sink[8192];
	msleep(5);
	return (void *)(long)read(*(int *)arg, sink, sizeof sink);
}

static void do_pipe(void)
{
	int p[2];
	if (pipe(p) != 0) {
		snprintf(out, sizeof out, "pipe: %s", strerror(errno));
		return;
	}
	pthread_t t;
	struct writer w = { p[1], 5, 1, 0 };
	pthread_create(&t, NULL, writer_main, &w);
	char buf[16] = { 0 };
	const ssize_t n = read(p[0], buf, sizeof buf); /* blocks until the thread writes */
	pthread_join(t, NULL);
	/* poll with a timeout: nothing, then the thread writes during the wait. */
	struct pollfd pf = { p[0], POLLIN, 0 };
	const int none = poll(&pf, 1, 10);
	pthread_create(&t, NULL, writer_main, &w);
	const int got = poll(&pf, 1, 5000);
	const int rev = pf.revents;
	pthread_join(t, NULL);
	char b2[16] = { 0 };
	const ssize_t n2 = read(p[0], b2, sizeof b2);
	/* A full pipe: a blocking write waits for the reader thread to make room. */
	static char big[4096];
	long filled = 0;
	fcntl(p[1], F_SETFL, O_NONBLOCK);
	ssize_t k;
	while ((k = write(p[1], big, sizeof big)) > 0)
		filled += k;
	const int full_errno = errno;
	fcntl(p[1], F_SETFL, 0);
	void *drained;
	pthread_create(&t, NULL, reader_main, &p[0]);
	const ssize_t more = write(p[1], "x", 1);
	pthread_join(t, &drained);
	snprintf(out, sizeof out,
		 "read %zd %.5s, poll %d then %d revents %d, read %zd %.5s, full at %ld (%s), "
		 "then wrote %zd after the reader took %ld",
		 n, buf, none, got, rev, n2, b2, filled, full_errno == EAGAIN ? "EAGAIN" : "?",
		 more, (long)drained);
	close(p[0]);
	close(p[1]);
}

static void do_epoll(void)
{
	const int ep = epoll_create1(EPOLL_CLOEXEC);
	const int ev = eventfd(0, EFD_NONBLOCK);
	const int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int p[2];
	if (ep < 0 || ev < 0 || tfd < 0 || pipe2(p, O_NONBLOCK) != 0) {
		snprintf(out, sizeof out, "setup: %s", strerror(errno));
		return;
	}
	struct epoll_event e = { .events = EPOLLIN | EPOLLET, .data.u64 = 1 };
	epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e);
	e = (struct epoll_event){ .events = EPOLLIN, .data.u64 = 2 };
	epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e);
	e = (struct epoll_event){ .events = EPOLLIN, .data.u64 = 3 };
	epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e);
	/* The eventfd, written twice by a thread and never read: edge-triggered, each write is
	   an event (mio's waker works so). */
	pthread_t t;
	struct writer w = { ev, 3, 2, 1 };
	pthread_create(&t, NULL, writer_main, &w);
	struct epoll_event got[8];
	int evfd_events = 0, rounds = 0;
	while (evfd_events < 2 && rounds++ < 10) {
		const int k = epoll_wait(ep, got, 8, 5000);
		for (int i = 0; i < k; i++)
			evfd_events += got[i].data.u64 == 1;
	}
	pthread_join(t, NULL);
	const int quiet = epoll_wait(ep, got, 8, 0); /* edge-triggered: nothing new */
	/* The pipe, level-triggered, written by a thread. */
	struct writer pw = { p[1], 3, 1, 0 };
	pthread_create(&t, NULL, writer_main, &pw);
	const int k1 = epoll_wait(ep, got, 8, 5000);
	const uint64_t d1 = k1 > 0 ? got[0].data.u64 : 0;
	pthread_join(t, NULL);
	const int again = epoll_wait(ep, got, 8, 0); /* level-triggered: still ready */
	char b[8];
	if (read(p[0], b, sizeof b) < 0)
		return;
	/* A periodic timer (2 ms). */
	struct itimerspec its = { { 0, 2000000 }, { 0, 2000000 } };
	timerfd_settime(tfd, 0, &its, NULL);
	const int k2 = epoll_wait(ep, got, 8, 5000);
	const uint64_t d2 = k2 > 0 ? got[0].data.u64 : 0;
	msleep(10);
	uint64_t expirations = 0;
	if (read(tfd, &expirations, 8) != 8)
		expirations = 0;
	its = (struct itimerspec){ { 0, 0 }, { 0, 0 } };
	timerfd_settime(tfd, 0, &its, NULL);
	struct itimerspec cur;
	timerfd_gettime(tfd, &cur);
	/* One-shot: reported once, then off until EPOLL_CTL_MOD. */
	e = (struct epoll_event){ .events = EPOLLIN | EPOLLONESHOT, .data.u64 = 2 };
	epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &e);
	if (write(p[1], "z", 1) != 1)
		return;
	const int os1 = epoll_wait(ep, got, 8, 0);
	const int os2 = epoll_wait(ep, got, 8, 0);
	epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &e);
	const int os3 = epoll_wait(ep, got, 8, 0);
	/* epoll inside epoll: the outer one is readable when the inner one is. */
	const int outer = epoll_create1(0);
	e = (struct epoll_event){ .events = EPOLLIN, .data.u64 = 9 };
	epoll_ctl(outer, EPOLL_CTL_ADD, ep, &e);
	const uint64_t one = 1;
	if (write(ev, &one, 8) != 8)
		return;
	const int nested = epoll_wait(outer, got, 8, 0);
	const uint64_t dn = nested > 0 ? got[0].data.u64 : 0;
	snprintf(out, sizeof out,
		 "eventfd events %d, then %d; pipe %d (data %lu), again %d; timer %d (data %lu), "
		 "expirations>=3 %d, disarmed %ld; oneshot %d %d %d; nested %d (data %lu)",
		 evfd_events, quiet, k1, (unsigned long)d1, again, k2, (unsigned long)d2,
		 expirations >= 3, (long)(cur.it_value.tv_sec + cur.it_value.tv_nsec), os1, os2, os3,
		 nested, (unsigned long)dn);
	close(outer);
	close(ep);
	close(ev);
	close(tfd);
	close(p[0]);
	close(p[1]);
}

static void do_select(void)
{
	int p[2];
	if (pipe(p) != 0)
		return;
	fd_set r;
	FD_ZERO(&r);
	FD_SET(p[0], &r);
	struct timeval tv = { 0, 10000 };
	const int none = select(p[0] + 1, &r, NULL, NULL, &tv);
	const int cleared = FD_ISSET(p[0], &r);
	pthread_t t;
	struct writer w = { p[1], 3, 1, 0 };
	pthread_create(&t, NULL, writer_main, &w);
	FD_SET(p[0], &r);
	fd_set wr;
	FD_ZERO(&wr);
	const int one = pselect(p[0] + 1, &r, &wr, NULL, NULL, NULL);
	pthread_join(t, NULL);
	FD_SET(p[1], &wr);
	const int writable = select(p[1] + 1, NULL, &wr, NULL, NULL);
	snprintf(out, sizeof out, "select %d cleared %d, pselect %d set %d, writable %d", none,
		 cleared, one, FD_ISSET(p[0], &r), writable);
	close(p[0]);
	close(p[1]);
}

static void do_timeout(void)
{
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	const int r = poll(NULL, 0, 20);
	const int ep = epoll_create1(0);
	struct epoll_event e;
	const int w = epoll_wait(ep, &e, 1, 10);
	clock_gettime(CLOCK_MONOTONIC, &b);
	const long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
	snprintf(out, sizeof out, "poll %d, epoll_wait %d, waited >= 30 ms: %d", r, w, ms >= 30);
	close(ep);
}

static void do_fds(void)
{
	const int a = eventfd(0, 0);
	const int b = timerfd_create(CLOCK_MONOTONIC, 0);
	const int c = epoll_create1(0);
	snprintf(out, sizeof out, "fds %d %d %d", a, b, c);
}

static void *sleeper(void *arg)
{
	(void)arg;
	for (;;)
		msleep(1000);
	return NULL;
}

static void do_forever(int with_sleeper)
{
	const int ev = eventfd(0, 0);
	pthread_t t;
	if (with_sleeper) {
		pthread_create(&t, NULL, sleeper, NULL);
		const int ep = epoll_create1(0);
		struct epoll_event e = { .events = EPOLLIN };
		epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e);
		epoll_wait(ep, &e, 1, -1);
	} else {
		uint64_t v;
		if (read(ev, &v, 8) != 8)
			return;
	}
	snprintf(out, sizeof out, "FAIL: woke up");
}

static void do_hostile(void)
{
	const int ep = epoll_create1(0);
	const int ep2 = epoll_create1(0);
	const int ev = eventfd(0, EFD_NONBLOCK);
	struct epoll_event e = { .events = EPOLLIN };
	struct epoll_event got[4];
	errno = 0;
	const int self = epoll_ctl(ep, EPOLL_CTL_ADD, ep, &e) == -1 ? errno : 0;
	epoll_ctl(ep, EPOLL_CTL_ADD, ep2, &e);
	const int loop = epoll_ctl(ep2, EPOLL_CTL_ADD, ep, &e) == -1 ? errno : 0;
	const int twice = (epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e),
			   epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == -1 ? errno : 0);
	const int badev = epoll_ctl(ep, EPOLL_CTL_MOD, ev, (void *)8) == -1 ? errno : 0;
	const int notreg = epoll_ctl(ep2, EPOLL_CTL_DEL, ev, NULL) == -1 ? errno : 0;
	const int hugemax = syscall(SYS_epoll_wait, ep, got, 0x7fffffff, 0) == -1 ? errno : 0;
	const int zeromax = epoll_wait(ep, got, 0, 0) == -1 ? errno : 0;
	const int badbuf = syscall(SYS_epoll_wait, ep, 8, 4, 0) == -1 ? errno : 0;
	const int notep = epoll_wait(ev, got, 4, 0) == -1 ? errno : 0;
	const int closed = epoll_wait(999, got, 4, 0) == -1 ? errno : 0;
	const int pollbad = syscall(SYS_poll, 8, 2, 0) == -1 ? errno : 0;
	const int pollhuge = syscall(SYS_poll, got, 1u << 30, 0) == -1 ? errno : 0;
	struct pollfd nv = { 999, POLLIN, 0 };
	const int pollnval = poll(&nv, 1, 0);
	const uint64_t max = UINT64_MAX;
	const int evmax = write(ev, &max, 8) == -1 ? errno : 0;
	const int evshort = write(ev, &max, 4) == -1 ? errno : 0;
	const int tbad = syscall(SYS_timerfd_settime, ev, 0, (void *)8, NULL) == -1 ? errno : 0;
	const int tclock = timerfd_create(12345, 0) == -1 ? errno : 0;
	const int selneg = syscall(SYS_select, -1, NULL, NULL, NULL, NULL) == -1 ? errno : 0;
	fd_set r;
	FD_ZERO(&r);
	FD_SET(900, &r);
	const int selbad = syscall(SYS_select, 901, &r, NULL, NULL, NULL) == -1 ? errno : 0;
	int n = 0;
	while (eventfd(0, 0) >= 0)
		n++;
	const int emfile = errno;
	snprintf(out, sizeof out,
		 "self %d, loop %d, twice %d, bad event %d, not registered %d, huge max %d, zero max "
		 "%d, bad buffer %d, not epoll %d, closed %d, poll bad %d, poll huge %d, poll nval "
		 "%d/%d, eventfd max %d, short %d, timer bad %d, clock %d, select -1 %d, select "
		 "closed %d, eventfds until %d (%d)",
		 self, loop, twice, badev, notreg, hugemax, zeromax, badbuf, notep, closed, pollbad,
		 pollhuge, pollnval, nv.revents, evmax, evshort, tbad, tclock, selneg, selbad,
		 n > 1000, emfile);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32];
	action_of(url, action, sizeof action);
	out[0] = 0;
	if (strcmp(action, "pipe") == 0)
		do_pipe();
	else if (strcmp(action, "epoll") == 0)
		do_epoll();
	else if (strcmp(action, "select") == 0)
		do_select();
	else if (strcmp(action, "timeout") == 0)
		do_timeout();
	else if (strcmp(action, "fds") == 0)
		do_fds();
	else if (strcmp(action, "forever") == 0)
		do_forever(0);
	else if (strcmp(action, "timeout_forever") == 0)
		do_forever(1);
	else if (strcmp(action, "hostile") == 0)
		do_hostile();
	else {
		respond(404, "unknown action");
		return;
	}
	respond(200, out);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "run") == 0) {
		do_pipe();
		puts(out);
		do_epoll();
		puts(out);
		do_select();
		puts(out);
		return 0;
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
