/* lineserver.c: a line-protocol server in edgevm's TCP server mode.

   The program serves TCP connections itself: the host listens (the program's "server"
   key), accepts, reads and writes; the program gets the events of its connections from
   wait_for_socket_events_paused() and answers with sys_sockets_write(). Configuration:

       "lines": { "filename": "...", "server": { "port": 6390, "address": "127.0.0.1",
                                                 "systems": 2 } }

   One command per line (LF or CR LF), one answer line each:
       PING          -> +PONG
       ECHO text     -> text
       INCR          -> :N   (this connection's counter)
       SYSTEM        -> :N   (which of the "systems" VMs serves this connection)
       QUIT          -> +BYE, and the connection is closed
       FDWRITE text  -> text, sent with write() on the connection number (not queued for
                        sys_sockets_write: it may overtake answers still queued)
       FDVEC         -> +VEC, sent with writev() in two pieces
       FDCLOSE       -> +BYE with write(), then close() on the connection number
       FDBAD         -> :-1 N, what write() on a number that is no connection gave (errno N)
       anything else -> -ERR unknown command
   A line longer than MAX_LINE bytes is refused (-ERR line too long) and the connection
   closed: the program bounds what a client can make it keep.

   Each system VM is long-lived (it is not reset between events): the per-connection state
   below lives as long as the connection. With LINESERVER_CRASH=1 in the environment the
   command CRASH makes the VM fault (the tests use it to show the host closing that VM's
   connections and starting it again), and a few more misuse the API on purpose:
   BADWRITE, BADDATA, BADFD (answered with what sys_sockets_write returned), FDHOSTILE
   (the errno of writev() with a bad vector and 5000 entries, sendto() with an address and
   write() from a bad pointer on the connection number), EXIT, BADWAIT,
   ZEROMAX (the VM ends and is started again).

   Run as a Linux process with a port (`./example_lineserver 6390`), the same code serves
   natively with its own epoll loop: the baseline of docs/BENCHMARKS.md. */
#include "kvm_api.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define MAX_LINE 4096
#define BATCH 64
#define OUT_ARENA (256 * 1024)

struct conn {
	int fd;           /* 0: free slot */
	size_t len;       /* bytes of an unfinished line in buf */
	long count;       /* INCR */
	char buf[MAX_LINE];
};

static struct conn *conns;
static int system_id;
static int crash_allowed;
static int native; /* a Linux process: real descriptors, write() and close() */

/* Answers of one batch of events, sent with one sys_sockets_write(). */
static struct kvm_socket_event writes[BATCH];
static int nwrites;
static char arena[OUT_ARENA];
static size_t used;

static struct conn *find(int fd, int make)
{
	unsigned h = (unsigned)fd % MAX_CONNS;
	for (unsigned i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[(h + i) % MAX_CONNS];
		if (c->fd == fd)
			return c;
		if (c->fd == 0 && make) {
			c->fd = fd;
			c->len = 0;
			c->count = 0;
			return c;
		}
	}
	return NULL;
}

static void flush_writes(void)
{
	if (native) {
		for (int i = 0; i < nwrites; i++) {
			if (writes[i].event == SOCKET_DISCONNECT)
				close(writes[i].fd);
			else if (write(writes[i].fd, writes[i].data, writes[i].data_len) < 0)
				perror("write");
		}
	} else if (nwrites > 0)
		sys_sockets_write(writes, nwrites);
	nwrites = 0;
	used = 0;
}

/* Queue `len` bytes for `fd` (event SOCKET_WRITABLE), or a close (SOCKET_DISCONNECT). */
static void queue(int fd, int event, const char *data, size_t len)
{
	if (nwrites == BATCH || used + len > OUT_ARENA)
		flush_writes();
	char *at = arena + used;
	memcpy(at, data, len);
	used += len;
	writes[nwrites++] = (struct kvm_socket_event){
		.fd = fd, .event = event, .data = (const uint8_t *)at, .data_len = len,
	};
}

static void say(int fd, const char *text)
{
	queue(fd, SOCKET_WRITABLE, text, strlen(text));
}

static void hang_up(struct conn *c)
{
	queue(c->fd, SOCKET_DISCONNECT, "", 0);
	c->fd = 0;
}

static void command(struct conn *c, char *line)
{
	char out[MAX_LINE + 16];
	if (strcmp(line, "PING") == 0) {
		say(c->fd, "+PONG\r\n");
	} else if (strncmp(line, "ECHO ", 5) == 0) {
		snprintf(out, sizeof(out), "%s\r\n", line + 5);
		say(c->fd, out);
	} else if (strcmp(line, "INCR") == 0) {
		snprintf(out, sizeof(out), ":%ld\r\n", ++c->count);
		say(c->fd, out);
	} else if (strcmp(line, "SYSTEM") == 0) {
		snprintf(out, sizeof(out), ":%d\r\n", system_id);
		say(c->fd, out);
	} else if (strcmp(line, "QUIT") == 0) {
		say(c->fd, "+BYE\r\n");
		hang_up(c);
	} else if (strncmp(line, "FDWRITE ", 8) == 0) {
		/* Connection numbers are descriptors for write() and close(), as in the
		   reference (and as the native mode's real sockets). */
		flush_writes();
		snprintf(out, sizeof(out), "%s\r\n", line + 8);
		if (write(c->fd, out, strlen(out)) < 0)
			perror("write");
	} else if (strcmp(line, "FDVEC") == 0) {
		flush_writes();
		struct iovec v[2] = { { "+VE", 3 }, { "C\r\n", 3 } };
		if (writev(c->fd, v, 2) < 0)
			perror("writev");
	} else if (strcmp(line, "FDCLOSE") == 0) {
		flush_writes();
		if (write(c->fd, "+BYE\r\n", 6) < 0)
			perror("write");
		close(c->fd);
		c->fd = 0;
	} else if (strcmp(line, "FDBAD") == 0) {
		long r = write(0x7ffffff0, "x", 1);
		snprintf(out, sizeof(out), ":%ld %d\r\n", r, r < 0 ? errno : 0);
		say(c->fd, out);
	} else if (strcmp(line, "CRASH") == 0 && crash_allowed) {
		volatile int *volatile nowhere = NULL;
		*nowhere = 1;
	} else if (strcmp(line, "BADWRITE") == 0 && crash_allowed) {
		long r = sys_sockets_write((const struct kvm_socket_event *)8, 1);
		snprintf(out, sizeof(out), ":%ld\r\n", r);
		say(c->fd, out);
	} else if ((strcmp(line, "BADDATA") == 0 || strcmp(line, "BADFD") == 0) && crash_allowed) {
		struct kvm_socket_event e = { .fd = line[3] == 'F' ? 0x7fffffff : c->fd,
			.event = SOCKET_WRITABLE, .data = (const uint8_t *)8, .data_len = 5 };
		if (line[3] == 'F')
			e.data = (const uint8_t *)"x";
		long r = sys_sockets_write(&e, 1);
		snprintf(out, sizeof(out), ":%ld %d\r\n", r, e.fd);
		say(c->fd, out);
	} else if (strcmp(line, "FDHOSTILE") == 0 && crash_allowed) {
		int e[4];
		struct iovec v[1] = { { "x", 1 } };
		struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(1) };
		const struct iovec *volatile bad_vec = (const struct iovec *)8;
		const char *volatile bad_ptr = (const char *)8;
		e[0] = writev(c->fd, bad_vec, 2) < 0 ? errno : 0;
		volatile int many = 5000;
		e[1] = writev(c->fd, v, many) < 0 ? errno : 0;
		e[2] = sendto(c->fd, "x", 1, 0, (struct sockaddr *)&to, sizeof(to)) < 0 ? errno : 0;
		e[3] = write(c->fd, bad_ptr, 5) < 0 ? errno : 0;
		snprintf(out, sizeof(out), ":%d %d %d %d\r\n", e[0], e[1], e[2], e[3]);
		say(c->fd, out);
	} else if (strcmp(line, "EXIT") == 0 && crash_allowed) {
		exit(3);
	} else if (strcmp(line, "BADWAIT") == 0 && crash_allowed) {
		wait_for_socket_events_paused((struct kvm_socket_event *)8, 4);
	} else if (strcmp(line, "ZEROMAX") == 0 && crash_allowed) {
		struct kvm_socket_event e;
		wait_for_socket_events_paused(&e, 0);
	} else {
		say(c->fd, "-ERR unknown command\r\n");
	}
}

static void on_data(int fd, const uint8_t *data, size_t len)
{
	struct conn *c = find(fd, 0);
	for (size_t i = 0; c != NULL && c->fd == fd && i < len; i++) {
		char ch = (char)data[i];
		if (ch != '\n') {
			if (c->len == MAX_LINE) {
				say(fd, "-ERR line too long\r\n");
				hang_up(c);
				return;
			}
			c->buf[c->len++] = ch;
			continue;
		}
		if (c->len > 0 && c->buf[c->len - 1] == '\r')
			c->len--;
		c->buf[c->len] = 0;
		c->len = 0;
		command(c, c->buf);
	}
}

static void serve(int system)
{
	system_id = system;
	for (;;) {
		struct kvm_socket_event ev[32];
		int n = wait_for_socket_events_paused(ev, 32);
		for (int i = 0; i < n; i++) {
			switch (ev[i].event) {
			case SOCKET_CONNECT:
				if (find(ev[i].fd, 1) == NULL) {
					say(ev[i].fd, "-ERR busy\r\n");
					queue(ev[i].fd, SOCKET_DISCONNECT, "", 0);
				}
				break;
			case SOCKET_READ:
				on_data(ev[i].fd, ev[i].data, ev[i].data_len);
				break;
			case SOCKET_DISCONNECT: {
				struct conn *c = find(ev[i].fd, 0);
				if (c != NULL)
					c->fd = 0;
				break;
			}
			default: /* SOCKET_WRITABLE: nothing is held back here */
				break;
			}
		}
		flush_writes();
	}
}

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	backend_response_str(200, "text/plain",
		"lineserver: connect with TCP (see the program's \"server\" setting)\n");
}

/* The same program as a Linux process: an epoll loop feeding the same functions. */
static int serve_natively(int port)
{
	native = 1;
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 128) < 0) {
		perror("listen");
		return 1;
	}
	int ep = epoll_create1(0);
	struct epoll_event e = { .events = EPOLLIN, .data.fd = l };
	epoll_ctl(ep, EPOLL_CTL_ADD, l, &e);
	static uint8_t buf[65536];
	for (;;) {
		struct epoll_event ev[32];
		int n = epoll_wait(ep, ev, 32, -1);
		for (int i = 0; i < n; i++) {
			int fd = ev[i].data.fd;
			if (fd == l) {
				int c = accept(l, NULL, NULL);
				if (c < 0)
					continue;
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				if (find(c, 1) == NULL) {
					close(c);
					continue;
				}
				struct epoll_event ce = { .events = EPOLLIN, .data.fd = c };
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
				continue;
			}
			ssize_t got = read(fd, buf, sizeof(buf));
			if (got <= 0) {
				struct conn *c = find(fd, 0);
				if (c != NULL)
					c->fd = 0;
				close(fd);
				continue;
			}
			on_data(fd, buf, (size_t)got);
		}
		flush_writes();
	}
}

int main(int argc, char **argv)
{
	conns = calloc(MAX_CONNS, sizeof(*conns));
	if (conns == NULL)
		return 1;
	const char *crash = getenv("LINESERVER_CRASH");
	crash_allowed = crash != NULL && strcmp(crash, "1") == 0;
	if (argc == 2 && strchr(argv[0], '/') != NULL)
		return serve_natively(atoi(argv[1]));
	set_backend_get(on_get);
	set_socket_prepare_for_pause(serve);
	wait_for_requests();
	return 0;
}
