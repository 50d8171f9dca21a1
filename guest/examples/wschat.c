/* wschat.c: a WebSocket chat in edgevm's TCP server mode ("websocket_server").

   The host listens, does the WebSocket handshake and the framing; the program gets the
   events of its connections from wait_for_socket_events_paused(), each SOCKET_READ one
   whole message (unmasked, fragments put together), and sends a message per entry with
   sys_sockets_write(). Configuration:

       "chat": { "filename": "...", "websocket_server": { "port": 8090, "systems": 2 } }

   A client connects to ws://127.0.0.1:8090/ROOM (the path it asks for is the SOCKET_CONNECT
   event's `arg`) and is greeted with "welcome to ROOM". Then:
       text not starting with '/'  -> sent to every other client of ROOM on the same system VM
       /echo TEXT                  -> TEXT back
       /count                      -> how many messages this connection sent
       /system                     -> which of the "systems" VMs serves the connection
       /binary N                   -> a binary message of N bytes 0, 1, 2, ... (N <= 1 MiB)
       /quit                       -> "bye", then the program closes the connection (1000)
       /write TEXT                 -> TEXT, sent with write() on the connection number
                                      (one text message per call), then /close: close()
       /badtext                    -> tries to send invalid UTF-8 as text; answers with
                                      what sys_sockets_write returned ("-22": refused)
   A binary message is echoed back as binary. The message type of a SOCKET_READ is its
   event's `arg`: "text" or "binary"; an entry sent with `arg` "binary" is a binary
   message, otherwise text.

   Each system VM is long-lived (not reset between events): rooms and connections below
   live as long as the program. Messages between systems would go through storage or
   shared memory; this example keeps rooms per system. */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define MAX_ROOM 64
#define BATCH 64
#define OUT_ARENA (2 * 1024 * 1024 + 4096)

struct conn {
	int fd; /* 0: free slot */
	long count;
	char room[MAX_ROOM];
};

static struct conn *conns;
static int system_id;

static struct kvm_socket_event writes[BATCH];
static int nwrites;
static char *arena;
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
			c->count = 0;
			c->room[0] = 0;
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

/* Queue one message (or a close with SOCKET_DISCONNECT) for `fd`. */
static void queue(int fd, int event, const void *data, size_t len, int binary)
{
	if (nwrites == BATCH || used + len > OUT_ARENA)
		flush_writes();
	char *at = arena + used;
	memcpy(at, data, len);
	used += len;
	writes[nwrites++] = (struct kvm_socket_event){
		.fd = fd, .event = event, .arg = binary ? "binary" : NULL,
		.data = (const uint8_t *)at, .data_len = len,
	};
}

static void say(int fd, const char *text)
{
	queue(fd, SOCKET_WRITABLE, text, strlen(text), 0);
}

static void command(struct conn *c, const char *msg, size_t len)
{
	char out[256];
	if (len > 6 && strncmp(msg, "/echo ", 6) == 0) {
		queue(c->fd, SOCKET_WRITABLE, msg + 6, len - 6, 0);
	} else if (len == 6 && strncmp(msg, "/count", 6) == 0) {
		snprintf(out, sizeof(out), "%ld", c->count);
		say(c->fd, out);
	} else if (len == 7 && strncmp(msg, "/system", 7) == 0) {
		snprintf(out, sizeof(out), "%d", system_id);
		say(c->fd, out);
	} else if (len > 8 && strncmp(msg, "/binary ", 8) == 0) {
		char num[16] = { 0 };
		memcpy(num, msg + 8, len - 8 < 15 ? len - 8 : 15);
		size_t n = strtoul(num, NULL, 10);
		if (n > 1024 * 1024)
			n = 1024 * 1024;
		flush_writes();
		for (size_t i = 0; i < n; i++)
			arena[i] = (char)i;
		used = n;
		writes[nwrites++] = (struct kvm_socket_event){ .fd = c->fd,
			.event = SOCKET_WRITABLE, .arg = "binary", .data = (const uint8_t *)arena,
			.data_len = n };
	} else if (len > 7 && strncmp(msg, "/write ", 7) == 0) {
		flush_writes();
		if (write(c->fd, msg + 7, len - 7) < 0)
			perror("write");
	} else if (len == 6 && strncmp(msg, "/close", 6) == 0) {
		flush_writes();
		close(c->fd);
		c->fd = 0;
	} else if (len == 5 && strncmp(msg, "/quit", 5) == 0) {
		say(c->fd, "bye");
		queue(c->fd, SOCKET_DISCONNECT, "", 0, 0);
		c->fd = 0;
	} else if (len == 8 && strncmp(msg, "/badtext", 8) == 0) {
		struct kvm_socket_event e = { .fd = c->fd, .event = SOCKET_WRITABLE,
			.data = (const uint8_t *)"\xc3\x28", .data_len = 2 };
		sys_sockets_write(&e, 1);
		snprintf(out, sizeof(out), "%d", e.fd);
		say(c->fd, out);
	} else {
		say(c->fd, "unknown command");
	}
}

static void on_message(int fd, const char *type, const uint8_t *data, size_t len)
{
	struct conn *c = find(fd, 0);
	if (c == NULL)
		return;
	c->count++;
	if (type != NULL && strcmp(type, "binary") == 0) {
		queue(fd, SOCKET_WRITABLE, data, len, 1);
		return;
	}
	if (len > 0 && data[0] == '/') {
		command(c, (const char *)data, len);
		return;
	}
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *o = &conns[i];
		if (o->fd != 0 && o != c && strcmp(o->room, c->room) == 0)
			queue(o->fd, SOCKET_WRITABLE, data, len, 0);
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
			case SOCKET_CONNECT: {
				struct conn *c = find(ev[i].fd, 1);
				if (c == NULL) {
					say(ev[i].fd, "busy");
					queue(ev[i].fd, SOCKET_DISCONNECT, "", 0, 0);
					break;
				}
				snprintf(c->room, sizeof(c->room), "%s", ev[i].arg);
				char hello[MAX_ROOM + 16];
				snprintf(hello, sizeof(hello), "welcome to %s", c->room);
				say(c->fd, hello);
				break;
			}
			case SOCKET_READ:
				on_message(ev[i].fd, ev[i].arg, ev[i].data, ev[i].data_len);
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
		"wschat: connect with WebSocket (see the program's \"websocket_server\" setting)\n");
}

int main(void)
{
	conns = calloc(MAX_CONNS, sizeof(*conns));
	arena = malloc(OUT_ARENA);
	if (conns == NULL || arena == NULL)
		return 1;
	set_backend_get(on_get);
	set_socket_prepare_for_pause(serve);
	wait_for_requests();
	return 0;
}
