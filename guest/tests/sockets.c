/* sockets.c: guest sockets under the network policy (tests/all/sockets.rs).

   Requests (GET /sockets/<action>?port=P&...), against a line server the test starts on
   127.0.0.1 (PING -> +PONG, SET k v -> +OK, GET k -> $v / -nil, QUIT closes):
     tcp        blocking connect, send/recv, poll, options, names, shutdown
     nonblock   non-blocking connect (EINPROGRESS), epoll for writability, SO_ERROR,
                sendmsg/recvmsg, writev/readv, MSG_PEEK
     denied     connect and sendto to destinations the policy refuses: the errors
     timeo      SO_RCVTIMEO/SO_SNDTIMEO on read(), readv() and write() of a socket: EAGAIN
     silent     connect to a peer that never answers and wait for its answer (the request's
                timeout ends it)
     unix?path= a Unix socket reached through allowed_paths (PING)
     hostile    bad addresses, lengths, families, options; exhaustion
     frozen     a socketpair opened by main() before the freeze: closed in requests
     resolve    getaddrinfo("localhost") through the host's /etc/hosts
     budget     bytes through a socketpair until the request's budget ends it (ENOBUFS)
     count      the descriptor a new socket gets (the same every request: reset closes) */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/uio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

static char out[2048];
static int frozen_pair[2] = { -1, -1 };

static struct sockaddr_in local(int port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static int port_of(const char *url)
{
	const char *p = query_param(url, "port");
	return p ? atoi(p) : 0;
}

/* Send a line, read the answer line (without \r\n) into buf. */
static int ask(int s, const char *line, char *buf, size_t n)
{
	if (send(s, line, strlen(line), 0) != (ssize_t)strlen(line))
		return -1;
	size_t got = 0;
	while (got + 1 < n) {
		ssize_t k = recv(s, buf + got, 1, 0);
		if (k <= 0)
			return -1;
		if (buf[got] == '\n')
			break;
		got++;
	}
	if (got > 0 && buf[got - 1] == '\r')
		got--;
	buf[got] = 0;
	return 0;
}

static void do_tcp(int port)
{
	const int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = local(port);
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		snprintf(out, sizeof out, "connect: %s", strerror(errno));
		return;
	}
	int one = 1;
	const int nodelay = setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	int v = 0;
	socklen_t vl = sizeof v;
	getsockopt(s, IPPROTO_TCP, TCP_NODELAY, &v, &vl);
	char r1[64], r2[64], r3[64];
	ask(s, "PING\r\n", r1, sizeof r1);
	ask(s, "SET greeting hello\r\n", r2, sizeof r2);
	ask(s, "GET greeting\r\n", r3, sizeof r3);
	struct sockaddr_in me, peer;
	socklen_t ml = sizeof me, pl = sizeof peer;
	getsockname(s, (struct sockaddr *)&me, &ml);
	getpeername(s, (struct sockaddr *)&peer, &pl);
	struct pollfd pf = { s, POLLIN, 0 };
	const int idle = poll(&pf, 1, 0);
	ask(s, "QUIT\r\n", r1 + 32, 32);
	char b;
	const ssize_t eof = read(s, &b, 1);
	shutdown(s, SHUT_RDWR);
	close(s);
	snprintf(out, sizeof out,
		 "%s %s %s; nodelay %d/%d; me %s port>0 %d; peer port ok %d; idle %d; eof %zd", r1, r2,
		 r3, nodelay, v != 0, me.sin_addr.s_addr == htonl(INADDR_LOOPBACK) ? "127.0.0.1" : "?",
		 ntohs(me.sin_port) > 0, ntohs(peer.sin_port) == port, idle, eof);
}

static void do_nonblock(int port)
{
	const int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in a = local(port);
	const int r = connect(s, (struct sockaddr *)&a, sizeof a);
	const int inprogress = r == 0 || errno == EINPROGRESS;
	const int ep = epoll_create1(0);
	struct epoll_event e = { .events = EPOLLOUT | EPOLLIN | EPOLLET, .data.fd = s };
	epoll_ctl(ep, EPOLL_CTL_ADD, s, &e);
	struct epoll_event got;
	const int n = epoll_wait(ep, &got, 1, 5000);
	int err = -1;
	socklen_t el = sizeof err;
	getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el);
	/* sendmsg with two pieces */
	struct iovec iov[2] = { { "PI", 2 }, { "NG\r\n", 4 } };
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
	const ssize_t sent = sendmsg(s, &m, 0);
	/* wait for the answer with epoll (edge: new data) */
	const int n2 = epoll_wait(ep, &got, 1, 5000);
	char peek[8] = { 0 };
	const ssize_t pk = recv(s, peek, 3, MSG_PEEK);
	char b1[3] = { 0 }, b2[8] = { 0 };
	struct iovec riov[2] = { { b1, 2 }, { b2, 5 } };
	struct msghdr rm = { .msg_iov = riov, .msg_iovlen = 2 };
	const ssize_t got_n = recvmsg(s, &rm, 0);
	const ssize_t again = recv(s, b2, 1, 0);
	const int again_errno = errno;
	/* writev/readv */
	struct iovec wv[2] = { { "GET ", 4 }, { "nothing\r\n", 9 } };
	const ssize_t wn = writev(s, wv, 2);
	struct pollfd pf = { s, POLLIN, 0 };
	poll(&pf, 1, 5000);
	char c1[2] = { 0 }, c2[8] = { 0 };
	struct iovec rv[2] = { { c1, 1 }, { c2, 6 } };
	const ssize_t rn = readv(s, rv, 2);
	close(ep);
	close(s);
	snprintf(out, sizeof out,
		 "inprogress %d, writable %d (%s), so_error %d, sent %zd, readable %d, peek %zd %.3s, "
		 "recvmsg %zd %s|%.4s flags %d, then %zd %s, writev %zd, readv %zd %s%.4s",
		 inprogress, n, n == 1 && (got.events & EPOLLOUT) ? "OUT" : "?", err, sent, n2, pk, peek,
		 got_n, b1, b2, rm.msg_flags, again, again_errno == EAGAIN ? "EAGAIN" : "?", wn, rn,
		 c1, c2);
}

static int err_of(int r)
{
	return r < 0 ? errno : 0;
}

static void do_denied(int port)
{
	const int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = local(port + 1); /* a port the policy does not list */
	const int lo = err_of(connect(s, (struct sockaddr *)&a, sizeof a));
	struct sockaddr_in m = local(80);
	m.sin_addr.s_addr = inet_addr("169.254.169.254");
	const int meta = err_of(connect(s, (struct sockaddr *)&m, sizeof m));
	m.sin_addr.s_addr = inet_addr("10.1.2.3");
	const int priv = err_of(connect(s, (struct sockaddr *)&m, sizeof m));
	const int s6 = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 a6;
	memset(&a6, 0, sizeof a6);
	a6.sin6_family = AF_INET6;
	a6.sin6_port = htons((unsigned short)port);
	inet_pton(AF_INET6, "::ffff:127.0.0.1", &a6.sin6_addr);
	const int mapped = err_of(connect(s6, (struct sockaddr *)&a6, sizeof a6));
	inet_pton(AF_INET6, "::1", &a6.sin6_addr);
	const int lo6 = err_of(connect(s6, (struct sockaddr *)&a6, sizeof a6));
	const int u = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in d = local(port + 1);
	const int udp = err_of((int)sendto(u, "x", 1, 0, (struct sockaddr *)&d, sizeof d));
	struct sockaddr_in ok = local(port);
	const int allowed = err_of(connect(s, (struct sockaddr *)&ok, sizeof ok));
	snprintf(out, sizeof out,
		 "loopback %d, metadata %d, private %d, v4-mapped %d (allowed), ::1 %d, udp %d, "
		 "allowed %d",
		 lo, meta, priv, mapped, lo6, udp, allowed);
}

static void do_silent(int port)
{
	const int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = local(port);
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		snprintf(out, sizeof out, "connect: %s", strerror(errno));
		return;
	}
	if (send(s, "PING\r\n", 6, 0) != 6)
		return;
	char b[8];
	const ssize_t n = recv(s, b, sizeof b, 0); /* never answers */
	snprintf(out, sizeof out, "FAIL: recv returned %zd", n);
}

/* SO_RCVTIMEO bounds read()/readv() of a socket, SO_SNDTIMEO write() (EAGAIN at the end). */
static void do_timeo(int port)
{
	const int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = local(port);
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		snprintf(out, sizeof out, "connect: %s", strerror(errno));
		return;
	}
	struct timeval tv = { .tv_sec = 0, .tv_usec = 50000 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	char b[8];
	errno = 0;
	const ssize_t n = read(s, b, sizeof b);
	const int e = errno;
	struct iovec iov = { .iov_base = b, .iov_len = sizeof b };
	errno = 0;
	const ssize_t nv = readv(s, &iov, 1);
	const int ev = errno;
	/* A peer that never reads: write() fills the buffers, then waits SO_SNDTIMEO. */
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	static char big[1 << 16];
	ssize_t w = 0;
	int ew = 0;
	for (int i = 0; i < 4096 && w >= 0; i++) {
		errno = 0;
		w = write(s, big, sizeof big);
		ew = errno;
	}
	snprintf(out, sizeof out, "timeo: read %zd %s, readv %zd %s, write %zd %s", n,
		 e == EAGAIN ? "EAGAIN" : strerror(e), nv, ev == EAGAIN ? "EAGAIN" : strerror(ev), w,
		 ew == EAGAIN ? "EAGAIN" : strerror(ew));
	close(s);
}

static void do_unix(const char *url)
{
	const char *p = query_param(url, "path");
	struct sockaddr_un a;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof a.sun_path, "%s", p ? p : "");
	char *amp = strchr(a.sun_path, '&');
	if (amp)
		*amp = 0;
	const int s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		snprintf(out, sizeof out, "connect %s: %s", a.sun_path, strerror(errno));
		close(s);
		return;
	}
	char r[32];
	ask(s, "PING\r\n", r, sizeof r);
	struct sockaddr_un peer;
	socklen_t pl = sizeof peer;
	getpeername(s, (struct sockaddr *)&peer, &pl);
	snprintf(out, sizeof out, "unix %s, peer family %d len %u", r, peer.sun_family, pl);
	close(s);
}

static void do_hostile(int port)
{
	const int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = local(port);
	const int badptr = err_of(connect(s, (struct sockaddr *)8, sizeof a));
	const int shortlen = err_of(connect(s, (struct sockaddr *)&a, 4));
	const int hugelen = err_of(connect(s, (struct sockaddr *)&a, 100000));
	const int netlink = err_of(socket(AF_NETLINK, SOCK_RAW, 0));
	const int raw = err_of(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
	const int proto = err_of(socket(AF_INET, SOCK_STREAM, IPPROTO_UDP));
	const int u = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un ab = { .sun_family = AF_UNIX };
	memcpy(ab.sun_path, "\0secret", 7);
	const int abstract = err_of(connect(u, (struct sockaddr *)&ab, sizeof ab));
	struct sockaddr_un nf = { .sun_family = AF_UNIX };
	snprintf(nf.sun_path, sizeof nf.sun_path, "/run/docker.sock");
	const int outside = err_of(connect(u, (struct sockaddr *)&nf, sizeof nf));
	struct sockaddr_in b80 = local(80);
	b80.sin_addr.s_addr = 0;
	const int bind80 = err_of(bind(s, (struct sockaddr *)&b80, sizeof b80));
	const int lst = err_of(listen(s, 5));
	int v = 1;
	const int dev = err_of(setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3));
	const int optbad = err_of(setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, (void *)8, sizeof v));
	socklen_t vl = sizeof v;
	const int getunk = err_of(getsockopt(s, SOL_SOCKET, SO_PEERCRED, &v, &vl));
	const int notsock = err_of((int)send(1, "x", 1, 0));
	const int badfd = err_of((int)send(999, "x", 1, 0));
	int sp[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
	struct iovec bad = { (void *)8, 10 };
	struct msghdr m = { .msg_iov = &bad, .msg_iovlen = 1 };
	const int badiov = err_of((int)sendmsg(sp[0], &m, 0));
	struct msghdr m2 = { .msg_iov = (void *)8, .msg_iovlen = 1 };
	const int badmsgiov = err_of((int)sendmsg(sp[0], &m2, 0));
	m2.msg_iovlen = 100000;
	const int hugeiov = err_of((int)sendmsg(sp[0], &m2, 0));
	const int badmsg = err_of((int)syscall(SYS_sendmsg, sp[0], 8, 0));
	/* A datagram pair: messages keep their bounds; recvmmsg takes two. */
	int dp[2];
	socketpair(AF_UNIX, SOCK_DGRAM, 0, dp);
	char m1[] = "one", m2b[] = "three";
	struct iovec s1 = { m1, 3 }, s2 = { m2b, 5 };
	struct mmsghdr mm[2] = { { .msg_hdr = { .msg_iov = &s1, .msg_iovlen = 1 } },
				 { .msg_hdr = { .msg_iov = &s2, .msg_iovlen = 1 } } };
	const int sentm = sendmmsg(dp[0], mm, 2, 0);
	char r1[8] = { 0 }, r2[8] = { 0 };
	struct iovec q1 = { r1, 8 }, q2 = { r2, 8 };
	struct mmsghdr rmm[2] = { { .msg_hdr = { .msg_iov = &q1, .msg_iovlen = 1 } },
				  { .msg_hdr = { .msg_iov = &q2, .msg_iovlen = 1 } } };
	const int gotm = recvmmsg(dp[1], rmm, 2, 0, NULL);
	/* Exhaustion: sockets per VM. */
	int n = 0;
	while (socket(AF_INET, SOCK_DGRAM, 0) >= 0)
		n++;
	const int emfile = errno;
	snprintf(out, sizeof out,
		 "bad pointer %d, short %d, huge %d, netlink %d, raw %d, proto %d, abstract %d, "
		 "outside %d, bind 80 %d, listen %d, bindtodevice %d, bad option %d, peercred %d, "
		 "not socket %d, bad fd %d, bad iov %d, bad msg iov %d, huge iov %d, bad msghdr %d, "
		 "sendmmsg %d, recvmmsg %d %s(%u) %s(%u), more sockets %d (%d)",
		 badptr, shortlen, hugelen, netlink, raw, proto, abstract, outside, bind80, lst, dev,
		 optbad, getunk, notsock, badfd, badiov, badmsgiov, hugeiov, badmsg, sentm, gotm, r1,
		 rmm[0].msg_len, r2, rmm[1].msg_len, n, emfile);
}

/* Past the byte budget of a request: ENOBUFS. */
static void do_budget(void)
{
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) != 0)
		return;
	static char buf[1 << 20];
	long long moved = 0;
	for (;;) {
		const ssize_t n = send(sp[0], buf, sizeof buf, MSG_DONTWAIT);
		if (n < 0)
			break;
		moved += n;
		const ssize_t m = recv(sp[1], buf, sizeof buf, 0);
		if (m < 0)
			break;
		moved += m;
	}
	snprintf(out, sizeof out, "moved %lld MiB, then %s", moved >> 20,
		 errno == ENOBUFS ? "ENOBUFS" : strerror(errno));
}

static void do_resolve(void)
{
	struct addrinfo h, *r = NULL;
	memset(&h, 0, sizeof h);
	h.ai_family = AF_INET;
	h.ai_socktype = SOCK_STREAM;
	const int e = getaddrinfo("localhost", "6379", &h, &r);
	if (e != 0) {
		snprintf(out, sizeof out, "getaddrinfo: %s", gai_strerror(e));
		return;
	}
	char b[64];
	const struct sockaddr_in *a = (const struct sockaddr_in *)r->ai_addr;
	snprintf(out, sizeof out, "localhost %s port %d", inet_ntop(AF_INET, &a->sin_addr, b, sizeof b),
		 ntohs(a->sin_port));
	freeaddrinfo(r);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32];
	action_of(url, action, sizeof action);
	const int port = port_of(url);
	out[0] = 0;
	if (strcmp(action, "tcp") == 0)
		do_tcp(port);
	else if (strcmp(action, "nonblock") == 0)
		do_nonblock(port);
	else if (strcmp(action, "denied") == 0)
		do_denied(port);
	else if (strcmp(action, "silent") == 0)
		do_silent(port);
	else if (strcmp(action, "timeo") == 0)
		do_timeo(port);
	else if (strcmp(action, "unix") == 0)
		do_unix(url);
	else if (strcmp(action, "hostile") == 0)
		do_hostile(port);
	else if (strcmp(action, "resolve") == 0)
		do_resolve();
	else if (strcmp(action, "budget") == 0)
		do_budget();
	else if (strcmp(action, "frozen") == 0) {
		const int w = err_of((int)write(frozen_pair[0], "x", 1));
		snprintf(out, sizeof out, "frozen socket write %d", w);
	} else if (strcmp(action, "count") == 0) {
		snprintf(out, sizeof out, "socket fd %d", socket(AF_INET, SOCK_STREAM, 0));
	} else {
		respond(404, "unknown action");
		return;
	}
	respond(200, out);
}

int main(void)
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, frozen_pair) != 0)
		return 1;
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
