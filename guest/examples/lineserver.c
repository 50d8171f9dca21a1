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
       anything else -> -ERR unknown command
   A line longer than MAX_LINE bytes is refused (-ERR line too long) and the connection
   closed: the program bounds what a client can make it keep.

   Each system VM is long-lived (it is not reset between events): the per-connection state
   below lives as long as the connection. With LINESERVER_CRASH=1 in the environment the
   command CRASH makes the VM fault (the tests use it to show the host closing that VM's
   connections and starting it again). */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	if (nwrites > 0)
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
	} else if (strcmp(line, "CRASH") == 0 && crash_allowed) {
		volatile int *volatile nowhere = NULL;
		*nowhere = 1;
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

int main(void)
{
	conns = calloc(MAX_CONNS, sizeof(*conns));
	if (conns == NULL)
		return 1;
	const char *crash = getenv("LINESERVER_CRASH");
	crash_allowed = crash != NULL && strcmp(crash, "1") == 0;
	set_backend_get(on_get);
	set_socket_prepare_for_pause(serve);
	wait_for_requests();
	return 0;
}
