/*
 * kvm_api.h -- the edgevm guest API.
 *
 * SPDX-License-Identifier: Apache-2.0
 *
 * edgevm runs ordinary static x86_64 Linux programs inside KVM VMs, one
 * isolated VM per HTTP request. A program initializes in main(), registers
 * one or more request handlers, and then calls wait_for_requests(). At that
 * point the VM is frozen; every request is served by a fresh copy-on-write
 * fork of the frozen VM that calls the registered handler, which produces the
 * response with backend_response*(). Anything the handler changes is thrown
 * away afterwards (unless the program is configured as non-ephemeral).
 *
 * This header is source-compatible with the guest API header used by the
 * Varnish TinyKVM "Compute" VMOD, and binary-compatible with programs built
 * against it: the same hypercall numbers, the same calling convention and the
 * same structure layouts. It was written from the published description of
 * that API; it shares no text with it.
 *
 * ---------------------------------------------------------------------------
 * ABI
 * ---------------------------------------------------------------------------
 * Every API call is a tiny assembly stub:
 *
 *        mov  $NUMBER, %eax
 *        out  %eax, $0          ; VM exit: KVM_EXIT_IO, port 0, 4 bytes
 *        ret
 *
 * Arguments are passed in the SysV AMD64 argument registers (rdi, rsi, rdx,
 * rcx, r8, r9) exactly as for a normal C call, and the host leaves the result
 * in rax (rax:rdx for 16-byte structures such as shared_memory_area()). The
 * guest runs at CPL3 with IOPL 0; the TSS I/O permission bitmap grants the
 * API's ports to CPL3, so `out` is permitted. Hypercall numbers are listed in
 * the EDGEVM_HYPERCALL_* constants below.
 *
 * The stubs are emitted into every translation unit that includes this
 * header, as weak symbols in COMDAT sections, so a program made of several
 * .c/.cpp files links without duplicate-symbol errors, and a program may
 * override any stub by providing its own (strong) definition. Define
 * KVM_API_ALREADY_DEFINED before including this header to suppress the stubs
 * completely (e.g. when they are provided by a library).
 *
 * All stubs live in one place: the "HYPERCALL STUBS" section at the end of
 * this file. If an in-guest fast path replaces a stub, change it there.
 *
 * This header compiles as C (gnu11/c11 and later) and C++ (c++11 and later),
 * with gcc/g++, clang and musl-gcc.
 */
#pragma once
#ifndef EDGEVM_KVM_API_H
#define EDGEVM_KVM_API_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
/* A freestanding build (-ffreestanding, e.g. with -nostdlib) uses no C library: the
   IS_*() macros ask the host instead of the environment, nothing is flushed, and the header
   calls are plain hypercalls (no in-guest fast path). Define KVM_API_FREESTANDING to get
   this in a hosted build too. */
#if !defined(KVM_API_FREESTANDING) && defined(__STDC_HOSTED__) && __STDC_HOSTED__ == 0
#define KVM_API_FREESTANDING 1
#endif
#ifndef KVM_API_FREESTANDING
#include <stdio.h>  /* fflush() before freezing and responding */
#include <stdio_ext.h> /* __fpending() */
#include <stdlib.h> /* getenv() for the IS_*() macros */
#endif

/* __builtin_malloc() is available (the http_alloc_*() helpers use it), as in the
   reference's header. */
#if defined(__GNUC__) && __GNUC__ > 7
#define HAS_BUILTIN_MALLOC
#elif defined(__has_builtin)
#if __has_builtin(__builtin_malloc)
#define HAS_BUILTIN_MALLOC
#endif
#endif

#if !defined(__x86_64__)
#error "kvm_api.h: edgevm guests must be compiled for x86_64"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ==========================================================================
 * Hypercall numbers (identical to the reference API; do not renumber)
 * ========================================================================== */
#define EDGEVM_HYPERCALL_REGISTER_FUNC          0x10000
#define EDGEVM_HYPERCALL_WAIT_FOR_REQUESTS      0x10001
#define EDGEVM_HYPERCALL_WAIT_PAUSED            0x10002
#define EDGEVM_HYPERCALL_SET_CACHEABLE          0x10005
#define EDGEVM_HYPERCALL_BACKEND_RESPONSE       0x10010
#define EDGEVM_HYPERCALL_STORAGE_RETURN         0x10011
#define EDGEVM_HYPERCALL_STREAMING_RESPONSE     0x10012
#define EDGEVM_HYPERCALL_STORAGE_NORETURN       0x10013
#define EDGEVM_HYPERCALL_HTTP_APPEND            0x10020
#define EDGEVM_HYPERCALL_HTTP_SET               0x10021
#define EDGEVM_HYPERCALL_HTTP_FIND              0x10022
#define EDGEVM_HYPERCALL_HTTP_METHOD            0x10023
#define EDGEVM_HYPERCALL_REGEX_COMPILE          0x10030
#define EDGEVM_HYPERCALL_REGEX_FREE             0x10031
#define EDGEVM_HYPERCALL_REGEX_MATCH            0x10032
#define EDGEVM_HYPERCALL_REGEX_SUBST            0x10033
#define EDGEVM_HYPERCALL_REGEX_COPYTO           0x10035
#define EDGEVM_HYPERCALL_SOCKETS_WRITE          0x10500
#define EDGEVM_HYPERCALL_SHARED_MEMORY_AREA     0x10700
#define EDGEVM_HYPERCALL_MAKE_EPHEMERAL         0x10703
#define EDGEVM_HYPERCALL_IS_STORAGE             0x10706
#define EDGEVM_HYPERCALL_STORAGE_ALLOW          0x10707
#define EDGEVM_HYPERCALL_STORAGE_CALLV          0x10708
#define EDGEVM_HYPERCALL_STORAGE_TASK           0x10709
#define EDGEVM_HYPERCALL_STOP_STORAGE_TASK      0x1070A
#define EDGEVM_HYPERCALL_MULTIPROCESS           0x10710
#define EDGEVM_HYPERCALL_MULTIPROCESS_ARRAY     0x10711
#define EDGEVM_HYPERCALL_MULTIPROCESS_CLONE     0x10712
#define EDGEVM_HYPERCALL_MULTIPROCESS_WAIT      0x10713
#define EDGEVM_HYPERCALL_GET_MEMINFO            0x10A00
#define EDGEVM_HYPERCALL_FETCH                  0x20000
#define EDGEVM_HYPERCALL_REQUEST                0x20001
#define EDGEVM_HYPERCALL_LOG                    0x7F000
#define EDGEVM_HYPERCALL_BREAKPOINT             0x7F7F7
#define EDGEVM_HYPERCALL_IS_DEBUG               0x7FDEB

/* Indices accepted by register_func(). */
#define EDGEVM_FUNC_BACKEND_GET          1
#define EDGEVM_FUNC_BACKEND_POST         2
#define EDGEVM_FUNC_BACKEND_REQUEST      3
#define EDGEVM_FUNC_BACKEND_STREAM_POST  4
#define EDGEVM_FUNC_ON_ERROR             5
#define EDGEVM_FUNC_ON_LIVE_UPDATE       6
#define EDGEVM_FUNC_ON_LIVE_RESTORE      7
#define EDGEVM_FUNC_SOCKET_PREPARE_PAUSE 12

#if defined(__GNUC__) || defined(__clang__)
#define EDGEVM_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define EDGEVM_PRINTF(fmt, args)
#endif

#ifdef __cplusplus
#define EDGEVM_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define EDGEVM_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* ==========================================================================
 * Environment: where am I running?
 * ==========================================================================
 * edgevm always sets these environment variables for the guest:
 *   KVM_NAME   program name            KVM_GROUP  program group
 *   KVM_TYPE   "request" or "storage"  KVM_STATE  path of the state file
 *   KVM_DEBUG  "0" or "1"
 * plus LC_TYPE=C, LC_ALL=C, USER=root and the configured `environment`.
 */
#ifndef KVM_API_FREESTANDING
static inline int kvm_api_env_equals(const char *name, const char *value)
{
	const char *v = getenv(name);
	return v != NULL && __builtin_strcmp(v, value) == 0;
}

/* True when main() runs inside an edgevm (or TinyKVM) sandbox. */
#define IS_SANDBOXED_MAIN()  (getenv("KVM_NAME") != NULL)
/* True when main() was started as an ordinary Linux process (e.g. from a
   terminal), so the program can run self-tests instead of serving. */
#define IS_LINUX_MAIN()      (!IS_SANDBOXED_MAIN())
/* True in the storage VM of a program with storage enabled. */
#define IS_STORAGE()         kvm_api_env_equals("KVM_TYPE", "storage")
/* True in the request VM (the VM that is forked for every request). */
#define IS_REQUEST()         kvm_api_env_equals("KVM_TYPE", "request")
/* True when the program is a debug program (KVM_DEBUG=1). */
#define IS_DEBUG()           kvm_api_env_equals("KVM_DEBUG", "1")
#else
/* Freestanding: no environment to read. The sandbox names a program's argv[0]
   without a '/' (main(argc, argv) must be in scope), the host answers the rest. */
#define IS_SANDBOXED_MAIN()  (__builtin_strchr(argv[0], '/') == NULL)
#define IS_LINUX_MAIN()      (!IS_SANDBOXED_MAIN())
#define IS_STORAGE()         (sys_is_storage() == 1)
#define IS_REQUEST()         (sys_is_storage() != 1)
#define IS_DEBUG()           (sys_is_debug() == 1)
extern int sys_is_storage(void);
extern int sys_is_debug(void);
#endif
/* True when the request passed to a paused/request handler is a warmup
   request generated by the server (not a real client). */
#define IS_WARMUP_REQUEST(req) (((req)->info_flags & KVM_REQUEST_INFO_WARMUP) != 0)

/* ==========================================================================
 * Lifecycle and handler registration
 * ==========================================================================
 * During initialization (before wait_for_requests()) a program registers
 * the handlers that will be called for requests:
 *
 *   static void on_get(const char *url, const char *arg)
 *   {
 *       http_set_str(RESP, "X-Hello: World");
 *       backend_response_str(200, "text/plain", "Hello World!");
 *   }
 *   int main(void)
 *   {
 *       set_backend_get(on_get);
 *       wait_for_requests();
 *   }
 *
 * The server picks the handler by method: set_backend_request() (if set)
 * receives every request; otherwise GET/HEAD go to the GET handler and
 * requests with a body go to the POST (or streaming POST) handler. `url` is
 * the request URL, `arg` the configured program argument.
 */

/* [0x10000] Register handler `idx` (see EDGEVM_FUNC_*). Only allowed before
   wait_for_requests(); the function address must be inside the program. */
extern void register_func(int idx, ...);

/* The GET handler: called for GET/HEAD requests. */
static inline void set_backend_get(void (*f)(const char *url, const char *arg))
{ register_func(EDGEVM_FUNC_BACKEND_GET, f); }

/* The POST handler: called with the full request body in `data`/`len`. */
static inline void set_backend_post(void (*f)(const char *url, const char *arg,
	const char *ctype, const uint8_t *data, size_t len))
{ register_func(EDGEVM_FUNC_BACKEND_POST, f); }

/* One request header as presented in struct kvm_request. `field` points to a
   "Key: value" string of `field_len` bytes (zero-terminated), and
   field[field_colon] == ':'. */
struct kvm_request_header {
	const char *field;
	uint32_t    field_colon;
	uint32_t    field_len;
};

/* kvm_request.info_flags bits. */
#define KVM_REQUEST_INFO_WARMUP 0x1

/* A complete request, as passed to set_backend_request() handlers and
   written by wait_for_requests_paused(). All strings are zero-terminated,
   and the lengths exclude the terminator. */
struct kvm_request {
	const char *method;
	const char *url;
	const char *arg;
	const char *content_type;
	uint16_t    method_len;
	uint16_t    url_len;
	uint16_t    arg_len;
	uint16_t    content_type_len;
	const uint8_t *content;     /* Request body, can be NULL. */
	size_t      content_len;
	/* Request headers. */
	const struct kvm_request_header *headers;
	uint16_t    num_headers;
	uint16_t    info_flags;     /* KVM_REQUEST_INFO_* */
	uint32_t    reserved0;
	union {
		uint64_t reserved1[2];
		uint64_t prng[2];   /* Per-request random seed from the host. */
	};
};
/* Older programs call it struct backend_request; the first fields are
   identical. Define KVM_API_NO_BACKEND_REQUEST to drop the alias. */
#ifndef KVM_API_NO_BACKEND_REQUEST
#define backend_request kvm_request
#endif

/* The generic request handler. Takes precedence over GET/POST handlers. */
static inline void set_backend_request(void (*f)(const struct kvm_request *))
{ register_func(EDGEVM_FUNC_BACKEND_REQUEST, f); }

/* Streaming POST: called for each body segment as it arrives, `off` is the
   offset of `data` in the whole body. Must return `len` (all of it consumed;
   anything else fails the request). The POST handler (required) is called at
   the end: with the whole body when it fitted in the 16 MiB request-body
   area, else with data NULL and len the total. Such bodies are not buffered
   by the server and may exceed max_body_size. */
static inline void set_backend_stream_post(long (*f)(const char *url, const char *arg,
	const char *ctype, const uint8_t *data, size_t len, size_t off))
{ register_func(EDGEVM_FUNC_BACKEND_STREAM_POST, f); }

/* Called when a request fails with an exception (crash, timeout, missing
   response, ...). It may produce a custom error response; it has a short
   time budget (about 1 second). Otherwise the client gets a 500. */
static inline void set_on_error(void (*f)(const char *url, const char *arg,
	const char *exception))
{ register_func(EDGEVM_FUNC_ON_ERROR, f); }

/* Live update: when a new version of the program is uploaded, the old
   storage VM's on_live_update() is called and hands over its state with
   storage_return(buf, len). The new program's on_live_restore(datalen) is
   then called and names the destination with storage_return(dst, datalen). */
static inline void set_on_live_update(void (*f)(void))
{ register_func(EDGEVM_FUNC_ON_LIVE_UPDATE, f); }
static inline void set_on_live_restore(void (*f)(size_t datalen))
{ register_func(EDGEVM_FUNC_ON_LIVE_RESTORE, f); }

/* TCP server mode: called in each serving VM with its index (see below). */
static inline void set_socket_prepare_for_pause(void (*f)(int system))
{ register_func(EDGEVM_FUNC_SOCKET_PREPARE_PAUSE, f); }

/* [0x10001] Ends initialization: the VM is frozen right here and becomes
   the template for all request VMs. Mandatory; a program that never calls
   it (or wait_for_requests_paused()) fails to load. Each request is a fresh
   call of a registered handler on a new stack. Does not return in the
   initialized VM. */
extern void wait_for_requests(void);

/* [0x10002] Event-loop style serving: the VM is paused at this call and is
   resumed for each request with `*req` filled in (strings live in a 64 KiB
   input area). Respond with backend_response*(), then loop:

     for (;;) {
         struct kvm_request req;
         wait_for_requests_paused(&req);
         backend_response_str(200, "text/plain", req.url);
     }
*/
extern void wait_for_requests_paused(struct kvm_request *req);

/* Program output: edgevm's stdout and stderr look like a terminal, so stdio
   writes them line by line. A partial line still in the stdio buffer is
   written out before the VM is frozen (so the frozen image holds nothing that
   every request would print again) and before a response is sent (so it is
   not thrown away with the request VM). Costs no VM exit when nothing is
   buffered (__fpending() takes no lock). */
static inline void edgevm_flush_stdout(void)
{
#ifndef KVM_API_FREESTANDING
	if (__fpending(stdout) != 0)
		fflush(stdout);
#endif
}
#define wait_for_requests() (edgevm_flush_stdout(), wait_for_requests())
#define wait_for_requests_paused(req)                                        \
	(edgevm_flush_stdout(), wait_for_requests_paused(req))

/* TCP server mode (a program's "server" key, docs/CONFIG.md): the host listens
   and owns the connections; `systems` long-lived VMs forked from the frozen
   program each call the set_socket_prepare_for_pause() callback with their
   index (0, 1, ...), which loops on wait_for_socket_events_paused(). A
   connection is a number (0x1000 and up) in these events, not a file
   descriptor: answer with sys_sockets_write(). Events, in arrival order:
     SOCKET_CONNECT    `remote` = the peer ("127.0.0.1:5000", "unix:/path"),
                       `arg` = "" ; a SOCKET_WRITABLE follows
     SOCKET_READ       `data`/`data_len`: bytes read (up to 64 KiB; valid until
                       the next wait); a SOCKET_WRITABLE follows (as the
                       reference's edge-triggered loop reports it)
     SOCKET_WRITABLE   also when data the host kept for a full connection is
                       all sent
     SOCKET_DISCONNECT the peer closed, an error, idle_timeout, or a close the
                       program asked for; the number is free again afterwards
   A program that crashes, exits or runs past max_request_time in a batch
   loses its VM's connections; the VM is started again. */
enum SocketEvent {
	SOCKET_CONNECT = 0,
	SOCKET_READ = 1,
	SOCKET_WRITABLE = 2,
	SOCKET_DISCONNECT = 3,
};
struct kvm_socket_event {
	int fd;
	int event;              /* enum SocketEvent */
	const char *remote;     /* SOCKET_CONNECT: the peer's address */
	const char *arg;        /* SOCKET_CONNECT: the program's arg ("" in TCP mode; the
	                           request target, e.g. "/chat", with websocket_server);
	                           websocket_server SOCKET_READ: "text" or "binary";
	                           sys_sockets_write: "binary" sends a binary message */
	const uint8_t *data;    /* SOCKET_READ: bytes read (websocket_server: one whole
	                           message); sys_sockets_write: to write */
	size_t data_len;
};
/* [0x10002] Wait for up to `max` (1..256 used) socket events; returns how many
   arrived (at least 1). */
extern int wait_for_socket_events_paused(struct kvm_socket_event *events, int max);
static inline int wait_for_socket_event_paused(struct kvm_socket_event *event)
{ return wait_for_socket_events_paused(event, 1); }
/* [0x10500] For each of the `n` (at most 256) entries: event SOCKET_WRITABLE
   sends `data_len` bytes of `data` to connection `fd`; SOCKET_DISCONNECT
   closes it once everything sent before is out (edgevm). As the reference, the
   result goes back into the entry's `fd`: the bytes taken (what the socket
   does not take at once is kept, up to 1 MiB per connection), -EAGAIN when
   that is full (a SOCKET_WRITABLE comes when it is sent), -EBADF, -EPIPE,
   -EFAULT, -EINVAL (another event). Returns the entries handled, -EFAULT for
   an unreadable array. With websocket_server (edgevm) an entry is one message,
   a text frame unless `arg` is "binary" (text must be UTF-8: -EINVAL), taken
   whole (its length) or not at all (-EAGAIN; -EMSGSIZE over 1 MiB), and
   SOCKET_DISCONNECT sends a close frame (1000) first. */
extern long sys_sockets_write(const struct kvm_socket_event *events, size_t n);

/* ==========================================================================
 * Responses
 * ========================================================================== */

/* One extra response header "Key: value" (not zero-terminated necessarily). */
struct ResponseHeader {
	const char *field;
	size_t      field_len;
};

/* Extra response options for backend_response_extra(). */
struct BackendResponseExtra {
	const struct ResponseHeader *headers; /* Up to 64 headers. */
	uint16_t num_headers;
	bool     cached;  /* Whether the response may be cached. */
	float    ttl;     /* Seconds. */
	float    grace;   /* Seconds. */
	float    keep;    /* Seconds. */
	uint64_t reserved[4];
};

/* [0x10010] Produce the response and end the request. Status must be in
   200..599, the content type shorter than 4096 bytes. The body is read
   directly from guest memory. `extra` may be NULL. In a handler this call
   does not come back; in wait_for_requests_paused() mode the VM continues
   after it when the next request arrives. */
extern void __attribute__((used))
sys_backend_response(int16_t status, const void *ctype, size_t ctype_len,
	const void *content, size_t content_len,
	const struct BackendResponseExtra *extra);

/* Response with explicit lengths. */
static inline void
backend_response(int16_t status, const void *ctype, size_t ctype_len,
	const void *content, size_t content_len)
{
	edgevm_flush_stdout();
	sys_backend_response(status, ctype, ctype_len, content, content_len, NULL);
}

/* Response from zero-terminated content type and body. */
static inline void
backend_response_str(int16_t status, const char *ctype, const char *content)
{
	edgevm_flush_stdout();
	sys_backend_response(status, ctype, __builtin_strlen(ctype),
		content, __builtin_strlen(content), NULL);
}

/* Response with extra headers and caching options. */
static inline void
backend_response_extra(int16_t status, const void *ctype, size_t ctype_len,
	const void *content, size_t content_len,
	const struct BackendResponseExtra *extra)
{
	edgevm_flush_stdout();
	sys_backend_response(status, ctype, ctype_len, content, content_len, extra);
}

/* Streaming responses: the callback is called repeatedly in the same VM and
   returns the next chunk, between 1 and `max` bytes (0 = stalled, which
   fails the delivery). `written` bytes have been sent out of `total`. */
struct streaming_content {
	const void *data;
	size_t      len;
};
typedef struct streaming_content (*content_stream_func)(void *arg, size_t max,
	size_t written, size_t total);

/* [0x10012] Start a streamed response of `content_length` bytes. All headers
   must be set before this call. Never returns. */
extern void __attribute__((noreturn, used))
begin_streaming_response(int16_t status, const void *ctype, size_t ctype_len,
	size_t content_length, content_stream_func content_cb, const void *arg);

/* ==========================================================================
 * HTTP header fields
 * ==========================================================================
 * `where` selects the header set. A program always runs as the backend, so
 * REQ and BEREQ name the request headers, RESP and BERESP the response
 * headers; binaries built against the reference header pass Varnish's
 * HDR_BEREQ (4) and HDR_BERESP (5), which mean the same. Any other value
 * fails the request.
 * Header fields are "Key: value": 4..65535 bytes, a colon followed by a
 * space, no leading/trailing whitespace, no control characters in the key.
 * sys_http_append() and sys_http_set() return the field's index (> 0, as
 * the reference: 5 + its position), or -1 when the header set is full (the
 * field is lost); an invalid field fails the request.
 */
static const int REQ      = 0;
static const int RESP     = 1;
static const int REQUEST  = 0;
static const int RESPONSE = 1;
static const int BEREQ    = 0;
static const int BERESP   = 1;
#define EDGEVM_HTTP_FMT_SIZE 4096
static const unsigned HTTP_FMT_SIZE = EDGEVM_HTTP_FMT_SIZE; /* Most fields fit. */

/* [0x10020] Append a header field (duplicates allowed). */
extern long sys_http_append(int where, const char *field, size_t len);

/* Append a zero-terminated header field. */
static inline void
http_append_str(int where, const char *field)
{ sys_http_append(where, field, __builtin_strlen(field)); }

/* Append a printf-formatted header field (max HTTP_FMT_SIZE bytes). */
static inline void EDGEVM_PRINTF(2, 3)
http_appendf(int where, const char *fmt, ...)
{
	char buffer[EDGEVM_HTTP_FMT_SIZE];
	va_list ap;
	va_start(ap, fmt);
	const int len = __builtin_vsnprintf(buffer, sizeof(buffer), fmt, ap);
	va_end(ap);
	if (len >= 0)
		sys_http_append(where, buffer,
			(size_t)len < sizeof(buffer) ? (size_t)len : sizeof(buffer) - 1);
}

/* [0x10021] Set (or overwrite) the field "Key: value": every field with that
   key is removed and this one appended (its index is returned). A string
   without a colon is a key, and unsets that field (the index of the first
   field removed, 0 if there was none). */
extern long sys_http_set(int where, const char *field, size_t len);

/* Set a zero-terminated header field. */
static inline void
http_set_str(int where, const char *field)
{ sys_http_set(where, field, __builtin_strlen(field)); }

/* Set a printf-formatted header field (max HTTP_FMT_SIZE bytes). */
static inline void EDGEVM_PRINTF(2, 3)
http_setf(int where, const char *fmt, ...)
{
	char buffer[EDGEVM_HTTP_FMT_SIZE];
	va_list ap;
	va_start(ap, fmt);
	const int len = __builtin_vsnprintf(buffer, sizeof(buffer), fmt, ap);
	va_end(ap);
	if (len >= 0)
		sys_http_set(where, buffer,
			(size_t)len < sizeof(buffer) ? (size_t)len : sizeof(buffer) - 1);
}

/* Remove a header field by key (zero-terminated / explicit length). */
static inline long
http_unset_str(int where, const char *key)
{ return sys_http_set(where, key, __builtin_strlen(key)); }

static inline long
http_unset(int where, const char *key, size_t len)
{ return sys_http_set(where, key, len); }

/* [0x10022] Find the header field with key `key` and copy the whole field
   ("Key: value", no NUL added) into outb. Returns its length; 0 if it is
   missing or longer than outl. With outb == NULL returns the length (0 if
   missing). A key with a forbidden character (": \0\b\e\f\t\r\n") fails
   the request. */
extern unsigned
sys_http_find(int where, const char *key, size_t key_len, char *outb, size_t outl);

static inline unsigned
http_find_str(int where, const char *key, char *outb, size_t outl)
{ return sys_http_find(where, key, __builtin_strlen(key), outb, outl); }

/* Length of a header field, 0 if missing. */
static inline unsigned
http_find_strlen(int where, const char *key)
{ return sys_http_find(where, key, __builtin_strlen(key), NULL, 0); }

#ifdef HAS_BUILTIN_MALLOC
/* Find a header field and return it as a malloc'ed zero-terminated string
   ("" when missing). The caller owns the result. */
static inline const char *
http_alloc_find(int where, const char *key)
{
	char buffer[EDGEVM_HTTP_FMT_SIZE];
	unsigned len = sys_http_find(where, key, __builtin_strlen(key),
		buffer, sizeof(buffer));
	if (len > sizeof(buffer))
		len = 0;
	char *result = (char *)__builtin_malloc(len + 1);
	if (result != NULL) {
		for (unsigned i = 0; i < len; i++)
			result[i] = buffer[i];
		result[len] = 0;
	}
	return result;
}
#endif

/* [0x10023] Copy the request method ("GET", "POST", ...) into outb (no NUL
   added). Returns its length, 0 if it does not fit in outl, the length if
   outb is NULL. */
extern unsigned long sys_http_method(char *outb, size_t outl);

#ifdef HAS_BUILTIN_MALLOC
/* The request method as a malloc'ed zero-terminated string. */
static inline const char *
http_alloc_method(void)
{
	char *result = (char *)__builtin_malloc(16);
	if (result != NULL) {
		unsigned long len = sys_http_method(result, 15);
		result[len < 16 ? len : 0] = 0;
	}
	return result;
}
#endif

/* ==========================================================================
 * Request text helpers: query parameters, JSON strings
 * (the same rules as the Rust crate's query_param() and json_escape())
 * ========================================================================== */

static inline int edgevm_hexval(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

/* Percent-decode the next byte of [*p, end) ('+' is a space; a '%' not
   followed by two hex digits stays as it is) and advance *p. */
static inline char edgevm_decode_next(const char **p, const char *end)
{
	const char *s = *p;
	if (*s == '+') { *p = s + 1; return ' '; }
	if (*s == '%' && end - s >= 3) {
		const int hi = edgevm_hexval(s[1]), lo = edgevm_hexval(s[2]);
		if (hi >= 0 && lo >= 0) { *p = s + 3; return (char)(hi << 4 | lo); }
	}
	*p = s + 1;
	return *s;
}

/* The value of query parameter `name` in `url` (the handler's url: program
   prefix, path and query string), percent-decoded into `out` and
   NUL-terminated. The query is what follows the first '?' (up to a '#');
   parameters are separated by '&'; "x" alone has the empty value; the first
   parameter whose decoded key is `name` wins. Returns the decoded length, or
   -1 when the parameter is missing. A return value >= outlen means the value
   was cut to outlen - 1 bytes (like snprintf). A value may contain "%00": the
   returned length counts it, strlen() stops there. */
static inline long
url_query_param(const char *url, const char *name, char *out, size_t outlen)
{
	const char *q = __builtin_strchr(url, '?');
	if (q == NULL)
		return -1;
	q++;
	const char *qend = __builtin_strchr(q, '#');
	if (qend == NULL)
		qend = q + __builtin_strlen(q);
	const size_t nlen = __builtin_strlen(name);
	while (q <= qend) {
		const char *amp = (const char *)__builtin_memchr(q, '&', (size_t)(qend - q));
		const char *pend = amp != NULL ? amp : qend;
		const char *eq = (const char *)__builtin_memchr(q, '=', (size_t)(pend - q));
		const char *kend = eq != NULL ? eq : pend;
		/* Compare the decoded key with name. */
		const char *k = q;
		size_t i = 0;
		int same = pend > q;
		while (same && k < kend) {
			const char c = edgevm_decode_next(&k, kend);
			same = i < nlen && c == name[i];
			i++;
		}
		if (same && i == nlen) {
			const char *v = eq != NULL ? eq + 1 : pend;
			size_t n = 0;
			while (v < pend) {
				const char c = edgevm_decode_next(&v, pend);
				if (n + 1 < outlen)
					out[n] = c;
				n++;
			}
			if (outlen > 0)
				out[n < outlen ? n : outlen - 1] = 0;
			return (long)n;
		}
		q = pend + 1;
	}
	return -1;
}

/* Escape `len` bytes of `in` for the inside of a JSON string into `out`
   (NUL-terminated): \" \\ \n \r \t \b \f, \u00XX for the other control
   characters and DEL; other bytes (UTF-8) as they are. Returns the escaped
   length; a value >= outlen means the output was cut (never in the middle of
   an escape). */
static inline size_t
json_escape(const char *in, size_t len, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0, written = 0;
	int full = 0;
	for (size_t i = 0; i < len; i++) {
		const unsigned char b = (unsigned char)in[i];
		char e[6];
		size_t el = 2;
		e[0] = '\\';
		switch (b) {
		case '"': e[1] = '"'; break;
		case '\\': e[1] = '\\'; break;
		case '\n': e[1] = 'n'; break;
		case '\r': e[1] = 'r'; break;
		case '\t': e[1] = 't'; break;
		case '\b': e[1] = 'b'; break;
		case '\f': e[1] = 'f'; break;
		default:
			if (b < 0x20 || b == 0x7f) {
				e[1] = 'u'; e[2] = '0'; e[3] = '0';
				e[4] = hex[b >> 4]; e[5] = hex[b & 15];
				el = 6;
			} else {
				e[0] = (char)b;
				el = 1;
			}
		}
		if (!full && written + el < outlen) {
			__builtin_memcpy(out + written, e, el);
			written += el;
		} else {
			full = 1;
		}
		n += el;
	}
	if (outlen > 0)
		out[written] = 0;
	return n;
}

/* The same for a NUL-terminated string. */
static inline size_t
json_escape_str(const char *in, char *out, size_t outlen)
{ return json_escape(in, __builtin_strlen(in), out, outlen); }

/* ==========================================================================
 * Caching
 * ========================================================================== */

/* [0x10005] Make the response cacheable with the given TTL, grace and keep
   in milliseconds. Only valid in backend context; returns -1 otherwise. */
extern long
sys_set_cacheable(bool cached, long ttl_ms, long grace_ms, long keep_ms);

/* The same with durations in seconds. */
static inline long
set_cacheable(bool cached, float ttl, float grace, float keep)
{
	return sys_set_cacheable(cached, (long)(ttl * 1000.0f),
		(long)(grace * 1000.0f), (long)(keep * 1000.0f));
}

/* ==========================================================================
 * Regular expressions (PCRE2 on the host, at most 64 handles per VM; handles made
 * in main() serve every request, a request's own are dropped at its reset)
 * ========================================================================== */
#define REGEX_SUBST_ALL 0x1

/* [0x10030] Compile a pattern; returns a handle >= 0 or negative on error. */
extern int  sys_regex_compile(const char *pattern, size_t len);
/* [0x10031] Free a compiled pattern. */
extern void sys_regex_free(int rgx);
/* [0x10032] Match; returns > 0 on match, 0 on no match, negative on error. */
extern int  sys_regex_match(int rgx, const char *buf, size_t len);
/* [0x10033] Substitute the first match of `rgx` in `buf` (every match with
   REGEX_SUBST_ALL) by `subst` (\0..\9: the match and its groups) into dst,
   NUL-terminated. Returns the result length, or -1 if it does not fit dstlen. */
extern long sys_regex_subst(int rgx, const char *buf, const char *subst,
	char *dst, size_t dstlen, int flags);
/* [0x10035] Copy the header fields matching `rgx` from one header set
   (REQ/RESP...) to another. Returns the number of fields copied. */
extern int  sys_regex_copyto(int rgx, int srchp, int dsthp);

/* ==========================================================================
 * Storage
 * ==========================================================================
 * A program with storage enabled gets a second, long-lived VM: the storage
 * VM, started from the same binary (IS_STORAGE() is true there). Its memory
 * is never reset, so it can hold mutable state. Request VMs call functions
 * in the storage VM with storage_call()/storage_callv(): the input buffers
 * are copied into storage, the function runs there, and the result passed
 * to storage_return() is copied back. Calls are serialized (one at a time).
 *
 *   static int counter = 0;
 *   static void increment(size_t n, struct virtbuffer buf[n], size_t res)
 *   {
 *       counter++;
 *       storage_return(&counter, sizeof(counter));
 *   }
 *   ... in a request handler:
 *   int value;
 *   storage_call(increment, NULL, 0, &value, sizeof(value));
 *
 * The storage VM may restrict which functions can be called with
 * STORAGE_ALLOW(fn) during initialization (no calls = everything allowed).
 */

/* A buffer passed to or from storage. */
struct virtbuffer {
	const void *data;
	size_t      len;
};

/* A storage function: `n` input buffers, `res` is the size of the caller's
   result buffer. Must end with storage_return*() or storage_noreturn(). */
typedef void (*storage_func)(size_t n, struct virtbuffer buffers[], size_t res);

/* [0x10706] Returns 1 in the storage VM, 0 otherwise. */
extern int sys_is_storage(void);

/* [0x10708] Call `func` in storage with `n` (<= 64) input buffers; the
   result is copied into dst (at most dstlen bytes). Returns the length the
   function passed to storage_return(), capped to dstlen (as is if dst is
   NULL), or -1 on error: more than 64 buffers, called from storage itself,
   or the function returned without storage_return(). A function refused by
   the STORAGE_ALLOW list, or that crashes or exceeds max_storage_time,
   fails the request. */
extern long storage_callv(storage_func func, size_t n,
	const struct virtbuffer buffers[], void *dst, size_t dstlen);

/* Call `func` in storage with a single input buffer. */
static inline long
storage_call(storage_func func, const void *src, size_t len, void *dst, size_t dstlen)
{
	struct virtbuffer buf[1];
	buf[0].data = src;
	buf[0].len = len;
	return storage_callv(func, 1, buf, dst, dstlen);
}

/* A storage task: runs in storage with a copy of `data`. */
typedef void (*storage_task_func)(void *data, size_t len);

/* [0x10709] Queue `task` to run in storage after `start` ms and then every
   `period` ms (0, 0 = run once, as soon as possible). `data` (<= 2 MB) is
   copied. Returns a task/timer id, or negative on error. */
extern long sys_storage_task(storage_task_func task, const void *data,
	size_t len, uint64_t start_ms, uint64_t period_ms);

/* Queue a task to run in storage as soon as possible. */
static inline long
storage_task(storage_task_func task, const void *data, size_t len)
{ return sys_storage_task(task, data, len, 0, 0); }

/* Schedule a (periodic) task; start and period in seconds. */
static inline long
schedule_storage_task(storage_task_func task, const void *data, size_t len,
	float start, float period)
{
	return sys_storage_task(task, data, len,
		(uint64_t)(start * 1000.0f), (uint64_t)(period * 1000.0f));
}

/* [0x1070A] Stop a scheduled task. Returns true on success. */
extern long stop_storage_task(long task);

/* [0x10011] From a storage function: hand `len` bytes at `data` back to the
   caller. The function then continues (briefly) so it can clean up and
   return normally. */
extern void storage_return(const void *data, size_t len);

/* Return no data from a storage function. */
static inline void storage_return_nothing(void) { storage_return(NULL, 0); }

/* [0x10013] Like storage_return(), but the function is never resumed. */
extern void __attribute__((noreturn))
storage_noreturn(const void *data, size_t len);

/* [0x10707] Add `fn` to the storage allow-list. Only from the storage VM,
   during initialization. */
extern long sys_storage_allow(void (*fn)(void));
#define STORAGE_ALLOW(fn) sys_storage_allow((void (*)(void))(fn))

/* ==========================================================================
 * Shared memory
 * ==========================================================================
 * With `shared_memory` configured, the top of the guest address space is
 * shared by the main VM and all request VMs of a program (never
 * copy-on-write, never reset), so writes are seen by every request VM
 * immediately. Use atomics. (The storage VM has its own memory.)
 */
struct shared_memory_info {
	uint64_t ptr; /* First byte of the area. */
	uint64_t end; /* One past the last byte. */
};
/* [0x10700] The shared area, or {0, 0} when not configured. */
extern struct shared_memory_info shared_memory_area(void);

/* Bump allocator over the shared area; returns NULL when it is full. Meant
   for main() (allocations are then identical in all VMs). */
#define SHM_ALLOC_BYTES(n) internal_shm_alloc((n), 8)
#define SHM_ALLOC_TYPE(T)  ((__typeof__(T) *)internal_shm_alloc(sizeof(T), __alignof__(T)))
#define SHM_ALLOC(x)       ((__typeof__(x) *)internal_shm_alloc(sizeof(x), __alignof__(x)))

/* One allocator state per program (weak: shared by all translation units). */
__attribute__((weak)) struct shared_memory_info edgevm_shm_alloc_state;

static inline void *
internal_shm_alloc(size_t size, size_t align)
{
	struct shared_memory_info *info = &edgevm_shm_alloc_state;
	if (info->ptr == 0)
		*info = shared_memory_area();
	if (align == 0)
		align = 1;
	const uint64_t p = (info->ptr + (align - 1)) & ~(uint64_t)(align - 1);
	if (p == 0 || p + size > info->end || p + size < p)
		return NULL;
	info->ptr = p + size;
	return (void *)(uintptr_t)p;
}

/* ==========================================================================
 * Ephemeral VMs and memory
 * ========================================================================== */

/* [0x10703] Choose whether request VMs are reset after every request.
   Only before wait_for_requests() and only when the configuration allows it
   (control_ephemeral); returns -1 otherwise. */
extern int sys_make_ephemeral(int ephemeral);

struct meminfo {
	uint64_t max_memory;     /* Main memory size. */
	uint64_t max_reqmem;     /* Max copy-on-write memory per request. */
	uint64_t reqmem_upper;   /* High-water mark of request memory. */
	uint64_t reqmem_current; /* Request memory in use now. */
};
/* [0x10A00] Fill in memory limits and usage. */
extern void get_meminfo(struct meminfo *info);

/* ==========================================================================
 * Multiprocessing (extra vCPUs inside one request VM)
 * ========================================================================== */

/* [0x10710] Start n-1 extra vCPUs (2 <= n <= "smp" + 1 total), each calling func(arg)
   on its own 512 KiB stack; returns 0 at once (-1 and a log line when refused).
   The caller is vCPU 0 and should do its share, then multiprocess_wait(). Workers
   may compute, sched_yield() and return; any other system call or kvm_api call fails
   the request (guest/README.md, "Multiprocessing"). */
typedef void (*multiprocess_t)(void *arg);
extern long multiprocess(size_t n, multiprocess_t func, void *arg);

/* [0x10711] Like multiprocess(); worker k is called as func(&array[k * element_size],
   element_size), as the reference does (whatever the typedef says): the caller handles
   element 0. */
typedef void (*multiprocess_array_t)(int vcpu, void *array, size_t element_size);
extern long multiprocess_array(size_t n, multiprocess_array_t func,
	void *array, size_t element_size);

/* [0x10712] Start n-1 extra vCPUs at the current instruction, each with its
   own stack of stack_size bytes carved from stack_base (n * stack_size bytes;
   worker k's stack ends at stack_base + k * stack_size). RFLAGS, RSP, RBP,
   RAX, R10, R11, R14 and R15 are clobbered. A worker ends in multiprocess_wait(). */
extern long multiprocess_clone(size_t n, void *stack_base, size_t stack_size);

/* [0x10713] Wait for all extra vCPUs to finish: 0 (a failed worker fails the
   request). On a worker: ends that worker. */
extern long multiprocess_wait(void);

/* The current vCPU id (%gs:0); 0 on the main vCPU. Not a hypercall. */
extern int vcpuid(void) __attribute__((const));
/* The index of the request VM this code runs in (%gs:4). Not a hypercall. */
extern int vcpureqid(void) __attribute__((const));

/* ==========================================================================
 * HTTP fetch (outgoing requests)
 * ==========================================================================
 * sys_fetch() makes an HTTP request from the host (the calling request waits;
 * no HTTP worker of the server does). URL: http://, https://, or a path
 * ("/program/x"): a self-request, served by the server itself in-process
 * (at most 4 deep, 50 at once server-wide). Method: GET, POST when
 * post_buffer is set, or curl_options.method (edgevm). Where a program may
 * connect is the server's network policy ("allow_net"/"deny_net", see
 * docs/CONFIG.md): public addresses by default; loopback, private,
 * link-local and cloud-metadata addresses only when allowed. Limits: 5 s to
 * connect, 8 s more for the answer (and never past the request's own
 * deadline), URL up to 8192 bytes, POST body up to 64 MB, response body up
 * to 256 MB.
 * Results: status, ctype/ctlen (truncated to 127 bytes, NUL-terminated).
 * When `content` is NULL the host maps a buffer for the body in guest
 * memory (NUL-terminated; counted against max_request_memory and undone
 * by the reset); otherwise `content` is the program's buffer of
 * `content_length` bytes and a larger body fails the call. When both
 * `headers` and `headers_length` are 0 the host maps the response headers
 * there too ("name: value\r\n"..., NUL-terminated); otherwise they are left
 * alone. Returns 0 on success, -1 on failure (the log says why; the
 * struct's contents are then undefined).
 */
struct curl_op {
	uint32_t    status;          /* out: HTTP status */
	uint32_t    post_buflen;
	const void *post_buffer;
	char       *headers;         /* out: response headers */
	uint32_t    headers_length;
	uint32_t    unused1;
	void       *content;         /* in/out: response body */
	uint32_t    content_length;
	uint32_t    ctlen;           /* out: content type length */
	char        ctype[128];      /* out: content type */
};
#define CURL_FIELDS_COUNT 12u
/* Up to 12 extra request header fields. */
struct curl_fields {
	const char *ptr[CURL_FIELDS_COUNT];
	uint16_t    len[CURL_FIELDS_COUNT];
};
#define CURL_SETFIELD(f, idx, value) \
	do { (f).ptr[idx] = (value); (f).len[idx] = (uint16_t)__builtin_strlen(value); } while (0)
struct curl_options {
	const char *interface;        /* Bind to an interface: not supported (fails). */
	union {
		const char *unused;       /* The reference's name. */
		const char *method;       /* edgevm: "PUT", "DELETE"... (NULL: GET/POST). */
	};
	int8_t      follow_location;  /* Follow redirects (at most 10, each hop checked). */
	int8_t      dummy_fetch;      /* Do not keep the content (content_length 0). */
	int8_t      tcp_fast_open;    /* Accepted, no effect. */
	int8_t      dont_verify_host; /* Do not verify the TLS certificate. */
	uint32_t    unused_opt5;
};
/* [0x20000] fields and options may be NULL. */
extern long sys_fetch(const char *url, size_t url_len, struct curl_op *op,
	struct curl_fields *fields, struct curl_options *opts);
/* [0x20001] Self-request; declared for compatibility, not implemented
   (returns -ENOSYS). */
extern long sys_request(const char *url, size_t url_len, struct curl_op *op,
	struct curl_fields *fields, struct curl_options *opts);

/* ==========================================================================
 * Logging and debugging
 * ========================================================================== */

/* [0x7F000] Write a log line (goes to the server log with the program
   name; guest stdout/stderr go to the same place). */
extern void sys_log(const char *buf, size_t len);

/* printf-style logging (lines up to 2 KiB). */
static inline void EDGEVM_PRINTF(1, 2)
vlogf(const char *fmt, ...)
{
	char buffer[2048];
	va_list ap;
	va_start(ap, fmt);
	const int len = __builtin_vsnprintf(buffer, sizeof(buffer), fmt, ap);
	va_end(ap);
	if (len >= 0 && (size_t)len < sizeof(buffer)) {
		sys_log(buffer, (size_t)len);
	} else {
		static const char overflow[] = "(log message too long)";
		sys_log(overflow, sizeof(overflow) - 1);
	}
}

/* [0x7FDEB] 1 if this is a debug program, else 0. */
extern int sys_is_debug(void);

/* [0x7F7F7] Breakpoint for remote GDB (debug programs only; no-op else). */
extern void sys_breakpoint(void);

/* ==========================================================================
 * Utilities
 * ========================================================================== */

/* Embed a file into the program (read-only, unaligned). Use at file scope
   in exactly one translation unit:
     EMBED_BINARY(index_html, "index.html")
   defines `char index_html[]` and `unsigned index_html_size`. */
#define EMBED_BINARY(name, filename)                     \
	__asm__(".pushsection .rodata\n"                     \
		".global " #name "\n"                            \
		".type " #name ", @object\n"                     \
		#name ":\n"                                      \
		"\t.incbin " #filename "\n"                      \
		#name "_end:\n"                                  \
		"\t.byte 0\n"                                    \
		".p2align 2\n"                                   \
		".global " #name "_size\n"                       \
		".type " #name "_size, @object\n"                \
		#name "_size:\n"                                 \
		"\t.int " #name "_end - " #name "\n"             \
		".popsection\n");                                \
	extern char name[];                                  \
	extern unsigned name##_size;

/* Cast away constness/type of a pointer ("I know what I'm doing"). */
#define TRUST_ME(ptr) ((void *)(uintptr_t)(ptr))

/* ==========================================================================
 * Layout checks (binary compatibility with the reference ABI)
 * ========================================================================== */
EDGEVM_STATIC_ASSERT(sizeof(struct kvm_request_header) == 16, "kvm_request_header");
EDGEVM_STATIC_ASSERT(offsetof(struct kvm_request, method_len) == 32, "kvm_request");
EDGEVM_STATIC_ASSERT(offsetof(struct kvm_request, content) == 40, "kvm_request");
EDGEVM_STATIC_ASSERT(offsetof(struct kvm_request, headers) == 56, "kvm_request");
EDGEVM_STATIC_ASSERT(offsetof(struct kvm_request, info_flags) == 66, "kvm_request");
EDGEVM_STATIC_ASSERT(sizeof(struct kvm_request) == 88, "kvm_request");
EDGEVM_STATIC_ASSERT(sizeof(struct ResponseHeader) == 16, "ResponseHeader");
EDGEVM_STATIC_ASSERT(offsetof(struct BackendResponseExtra, cached) == 10, "BackendResponseExtra");
EDGEVM_STATIC_ASSERT(offsetof(struct BackendResponseExtra, ttl) == 12, "BackendResponseExtra");
EDGEVM_STATIC_ASSERT(sizeof(struct BackendResponseExtra) == 56, "BackendResponseExtra");
EDGEVM_STATIC_ASSERT(sizeof(struct virtbuffer) == 16, "virtbuffer");
EDGEVM_STATIC_ASSERT(sizeof(struct meminfo) == 32, "meminfo");
EDGEVM_STATIC_ASSERT(offsetof(struct curl_op, ctype) == 48, "curl_op");
EDGEVM_STATIC_ASSERT(sizeof(struct curl_op) == 176, "curl_op");
EDGEVM_STATIC_ASSERT(sizeof(struct curl_fields) == 120, "curl_fields");
EDGEVM_STATIC_ASSERT(sizeof(struct curl_options) == 24, "curl_options");
EDGEVM_STATIC_ASSERT(sizeof(struct kvm_socket_event) == 40, "kvm_socket_event");

/* ==========================================================================
 * HYPERCALL STUBS
 * ==========================================================================
 * Each API entry point is `mov $NUM, %eax; out %eax, $0; ret`. They are
 * weak symbols in COMDAT sections: the linker keeps one copy per program,
 * and a strong definition elsewhere overrides them. `.ifndef` skips a stub
 * already defined in the same assembler input (LTO merges the top-level asm
 * of all translation units into one file). To replace a call with
 * an in-guest fast path, change its line here (or define it elsewhere).
 */
#ifndef KVM_API_ALREADY_DEFINED

#define EDGEVM_STUB_BEGIN(name)                                              \
	".ifndef " #name "\n"                                                    \
	".pushsection .text.edgevm." #name ",\"axG\",@progbits," #name ",comdat\n" \
	".weak " #name "\n"                                                      \
	".type " #name ", @function\n"                                           \
	".p2align 4\n"                                                           \
	#name ":\n"                                                              \
	".cfi_startproc\n"
#define EDGEVM_STUB_END(name)                                                \
	".cfi_endproc\n"                                                         \
	".size " #name ", . - " #name "\n"                                       \
	".popsection\n"                                                          \
	".endif\n"
#define EDGEVM_STUB_STR_(x) #x
#define EDGEVM_STUB_STR(x) EDGEVM_STUB_STR_(x)

/* A hypercall: number in eax, OUT to port 0, result in rax. */
#define EDGEVM_HYPERCALL_STUB(name, num)                                     \
	__asm__(EDGEVM_STUB_BEGIN(name)                                          \
		"\tmov $" EDGEVM_STUB_STR(num) ", %eax\n"                            \
		"\tout %eax, $0\n"                                                   \
		"\tret\n"                                                            \
		EDGEVM_STUB_END(name))

EDGEVM_HYPERCALL_STUB(register_func,            EDGEVM_HYPERCALL_REGISTER_FUNC);
EDGEVM_HYPERCALL_STUB(wait_for_requests,        EDGEVM_HYPERCALL_WAIT_FOR_REQUESTS);
EDGEVM_HYPERCALL_STUB(wait_for_requests_paused, EDGEVM_HYPERCALL_WAIT_PAUSED);
EDGEVM_HYPERCALL_STUB(sys_set_cacheable,        EDGEVM_HYPERCALL_SET_CACHEABLE);
EDGEVM_HYPERCALL_STUB(sys_backend_response,     EDGEVM_HYPERCALL_BACKEND_RESPONSE);
EDGEVM_HYPERCALL_STUB(storage_return,           EDGEVM_HYPERCALL_STORAGE_RETURN);
EDGEVM_HYPERCALL_STUB(begin_streaming_response, EDGEVM_HYPERCALL_STREAMING_RESPONSE);
EDGEVM_HYPERCALL_STUB(storage_noreturn,         EDGEVM_HYPERCALL_STORAGE_NORETURN);
EDGEVM_HYPERCALL_STUB(edgevm_hc_sys_http_append, EDGEVM_HYPERCALL_HTTP_APPEND);
EDGEVM_HYPERCALL_STUB(edgevm_hc_sys_http_set, EDGEVM_HYPERCALL_HTTP_SET);
EDGEVM_HYPERCALL_STUB(edgevm_hc_sys_http_find, EDGEVM_HYPERCALL_HTTP_FIND);
EDGEVM_HYPERCALL_STUB(edgevm_hc_sys_http_method, EDGEVM_HYPERCALL_HTTP_METHOD);
EDGEVM_HYPERCALL_STUB(sys_regex_compile,        EDGEVM_HYPERCALL_REGEX_COMPILE);
EDGEVM_HYPERCALL_STUB(sys_regex_free,           EDGEVM_HYPERCALL_REGEX_FREE);
EDGEVM_HYPERCALL_STUB(sys_regex_match,          EDGEVM_HYPERCALL_REGEX_MATCH);
EDGEVM_HYPERCALL_STUB(sys_regex_subst,          EDGEVM_HYPERCALL_REGEX_SUBST);
EDGEVM_HYPERCALL_STUB(sys_regex_copyto,         EDGEVM_HYPERCALL_REGEX_COPYTO);
EDGEVM_HYPERCALL_STUB(shared_memory_area,       EDGEVM_HYPERCALL_SHARED_MEMORY_AREA);
EDGEVM_HYPERCALL_STUB(sys_make_ephemeral,       EDGEVM_HYPERCALL_MAKE_EPHEMERAL);
EDGEVM_HYPERCALL_STUB(sys_is_storage,           EDGEVM_HYPERCALL_IS_STORAGE);
EDGEVM_HYPERCALL_STUB(sys_storage_allow,        EDGEVM_HYPERCALL_STORAGE_ALLOW);
EDGEVM_HYPERCALL_STUB(storage_callv,            EDGEVM_HYPERCALL_STORAGE_CALLV);
EDGEVM_HYPERCALL_STUB(sys_storage_task,         EDGEVM_HYPERCALL_STORAGE_TASK);
EDGEVM_HYPERCALL_STUB(stop_storage_task,        EDGEVM_HYPERCALL_STOP_STORAGE_TASK);
EDGEVM_HYPERCALL_STUB(multiprocess,             EDGEVM_HYPERCALL_MULTIPROCESS);
EDGEVM_HYPERCALL_STUB(multiprocess_array,       EDGEVM_HYPERCALL_MULTIPROCESS_ARRAY);
EDGEVM_HYPERCALL_STUB(multiprocess_clone,       EDGEVM_HYPERCALL_MULTIPROCESS_CLONE);
EDGEVM_HYPERCALL_STUB(multiprocess_wait,        EDGEVM_HYPERCALL_MULTIPROCESS_WAIT);
EDGEVM_HYPERCALL_STUB(get_meminfo,              EDGEVM_HYPERCALL_GET_MEMINFO);
EDGEVM_HYPERCALL_STUB(sys_fetch,                EDGEVM_HYPERCALL_FETCH);
EDGEVM_HYPERCALL_STUB(sys_request,              EDGEVM_HYPERCALL_REQUEST);
EDGEVM_HYPERCALL_STUB(sys_log,                  EDGEVM_HYPERCALL_LOG);
EDGEVM_HYPERCALL_STUB(sys_is_debug,             EDGEVM_HYPERCALL_IS_DEBUG);
EDGEVM_HYPERCALL_STUB(sys_breakpoint,           EDGEVM_HYPERCALL_BREAKPOINT);
EDGEVM_HYPERCALL_STUB(wait_for_socket_events_paused, EDGEVM_HYPERCALL_WAIT_PAUSED);
EDGEVM_HYPERCALL_STUB(sys_sockets_write,        EDGEVM_HYPERCALL_SOCKETS_WRITE);

/* Not hypercalls: per-vCPU data the host keeps at %gs. */
__asm__(EDGEVM_STUB_BEGIN(vcpuid)
	"\tmovl %gs:0, %eax\n"
	"\tret\n"
	EDGEVM_STUB_END(vcpuid));
__asm__(EDGEVM_STUB_BEGIN(vcpureqid)
	"\tmovl %gs:4, %eax\n"
	"\tret\n"
	EDGEVM_STUB_END(vcpureqid));


/* --------------------------------------------------------------------------
 * In-guest header calls (edgevm fast path)
 *
 * Under edgevm (environment EDGEVM_IO=1) the host places each request in an
 * I/O area at EDGEVM_IO_BASE before calling the handler, and reads the
 * response headers from it when the program calls backend_response(). The
 * header calls below work on that area directly: no VM exit, so a plain
 * request costs exactly one exit. Elsewhere (the reference system) and for
 * anything the fast path does not accept (an invalid field, a full table),
 * they make the hypercall, and the host applies the same rules to the same
 * area, so behaviour is identical either way.
 * -------------------------------------------------------------------------- */
#define EDGEVM_IO_BASE        0x20000UL
#define EDGEVM_IO_REQ_TABLE   (EDGEVM_IO_BASE + 0x1000)
#define EDGEVM_IO_REQ_MAX     512u
#define EDGEVM_IO_RESP_TABLE  (EDGEVM_IO_BASE + 0x3000)
#define EDGEVM_IO_RESP_MAX    128u
#define EDGEVM_IO_REQUEST     (EDGEVM_IO_BASE + 0x3800)
#define EDGEVM_IO_REQ_BLOB    (EDGEVM_IO_BASE + 0x4000)
#define EDGEVM_IO_REQ_BLOB_SIZE  0x40000u
#define EDGEVM_IO_RESP_BLOB   (EDGEVM_IO_REQ_BLOB + EDGEVM_IO_REQ_BLOB_SIZE)
#define EDGEVM_IO_RESP_BLOB_SIZE (0x100000u - (unsigned)EDGEVM_IO_RESP_BLOB)
#define EDGEVM_IO_MAGIC       0x4F495645u /* "EVIO" */
#define EDGEVM_IO_FIRST_INDEX 5 /* field index of table entry 0 (as the reference) */

struct edgevm_io {
	uint32_t magic, version;
	uint32_t req_count, resp_count;
	uint32_t req_used, resp_used;
	uint32_t flags, reserved;
};

extern long edgevm_hc_sys_http_append(int where, const char *field, size_t len);
extern long edgevm_hc_sys_http_set(int where, const char *field, size_t len);
extern unsigned edgevm_hc_sys_http_find(int where, const char *key, size_t key_len, char *outb, size_t outl);
extern unsigned long edgevm_hc_sys_http_method(char *outb, size_t outl);

static inline struct edgevm_io *edgevm_io_area(void)
{
#ifdef KVM_API_FREESTANDING
	return NULL; /* no environment: always the hypercalls */
#else
	const char *e = getenv("EDGEVM_IO");
	if (e == NULL || e[0] != '1')
		return NULL;
	struct edgevm_io *io = (struct edgevm_io *)EDGEVM_IO_BASE;
	return (io->magic == EDGEVM_IO_MAGIC && io->version == 1) ? io : NULL;
#endif
}

/* The reference's key rules for sys_http_find: 1..65535 bytes, none of
   ": \0\b\e\f\t\r\n". */
static inline int edgevm_io_valid_key(const char *k, size_t len)
{
	if (len < 1 || len > 65535)
		return 0;
	for (size_t i = 0; i < len; i++) {
		const char c = k[i];
		if (c == ':' || c == ' ' || c == 0 || c == 8 || c == 0x1b || c == 0x0c
			|| c == '\t' || c == '\r' || c == '\n')
			return 0;
	}
	return 1;
}

#ifndef KVM_API_FREESTANDING
/* The validation rules of the host (and the reference). Returns the colon
   index, or -1. */
static inline long edgevm_io_validate(const char *f, size_t len)
{
	if (len < 4 || len > 65535)
		return -1;
	size_t colon = 0;
	while (colon < len && f[colon] != ':')
		colon++;
	if (colon == 0 || colon == len)
		return -1;
	for (size_t i = 0; i < colon; i++) {
		const unsigned char c = (unsigned char)f[i];
		if (c == ' ' || c == 0 || c == 8 || c == 0x1b || c == 0x0c || c == '\t'
			|| c == '\r' || c == '\n' || c >= 0x7f)
			return -1;
	}
	if (colon + 1 >= len || f[colon + 1] != ' ')
		return -1;
	if (f[len - 1] == ' ' || f[len - 1] == '\t')
		return -1;
	for (size_t i = colon + 1; i < len; i++)
		if (f[i] == 0 || f[i] == '\r' || f[i] == '\n')
			return -1;
	return (long)colon;
}

/* `where`: 0 or 4 (REQ, BEREQ), 1 or 5 (RESP, BERESP); -1 for anything else
   (the host decides: it fails the request). */
static inline int edgevm_io_where(int where)
{
	return (where == 0 || where == 4) ? 0 : (where == 1 || where == 5) ? 1 : -1;
}

/* `where` must be edgevm_io_where()'s 0 or 1. */
static inline struct kvm_request_header *edgevm_io_table(int where, uint32_t **count, uint32_t *max)
{
	struct edgevm_io *io = (struct edgevm_io *)EDGEVM_IO_BASE;
	if (where == 1) {
		*count = &io->resp_count;
		*max = EDGEVM_IO_RESP_MAX;
		return (struct kvm_request_header *)EDGEVM_IO_RESP_TABLE;
	}
	*count = &io->req_count;
	*max = EDGEVM_IO_REQ_MAX;
	return (struct kvm_request_header *)EDGEVM_IO_REQ_TABLE;
}

static inline int edgevm_io_keyeq(const struct kvm_request_header *h, const char *key, size_t klen)
{
	if (h->field_len == 0 || h->field_colon != klen)
		return 0;
	for (size_t i = 0; i < klen; i++) {
		char a = h->field[i], b = key[i];
		if (a >= 'A' && a <= 'Z') a = (char)(a + 32);
		if (b >= 'A' && b <= 'Z') b = (char)(b + 32);
		if (a != b)
			return 0;
	}
	return 1;
}

/* Append; returns the field index, or -1 when the hypercall must decide. */
static inline long edgevm_io_append(struct edgevm_io *io, int where, const char *f, size_t len)
{
	const long colon = edgevm_io_validate(f, len);
	uint32_t *count, max;
	struct kvm_request_header *t = edgevm_io_table(where, &count, &max);
	uint32_t *used = where == 1 ? &io->resp_used : &io->req_used;
	char *blob = (char *)(where == 1 ? EDGEVM_IO_RESP_BLOB : EDGEVM_IO_REQ_BLOB);
	const uint32_t cap = where == 1 ? EDGEVM_IO_RESP_BLOB_SIZE : EDGEVM_IO_REQ_BLOB_SIZE;
	if (colon < 0 || *count >= max || *used + len + 1 > cap)
		return -1;
	char *dst = blob + *used;
	__builtin_memcpy(dst, f, len);
	dst[len] = 0;
	t[*count].field = dst;
	t[*count].field_colon = (uint32_t)colon;
	t[*count].field_len = (uint32_t)len;
	*count += 1;
	*used += (uint32_t)len + 1;
	return (long)(*count - 1) + EDGEVM_IO_FIRST_INDEX;
}

/* Remove the key's fields; the index of the first one removed, 0 if none. */
static inline long edgevm_io_unset(int where, const char *key, size_t klen)
{
	uint32_t *count, max;
	long first = 0;
	struct kvm_request_header *t = edgevm_io_table(where, &count, &max);
	for (uint32_t i = 0; i < *count && i < max; i++)
		if (edgevm_io_keyeq(&t[i], key, klen)) {
			t[i].field_len = 0;
			if (first == 0)
				first = (long)i + EDGEVM_IO_FIRST_INDEX;
		}
	return first;
}

__attribute__((weak)) long sys_http_append(int where, const char *field, size_t len)
{
	struct edgevm_io *io = edgevm_io_area();
	const int w = edgevm_io_where(where);
	if (io != NULL && w >= 0) {
		const long idx = edgevm_io_append(io, w, field, len);
		if (idx >= 0)
			return idx;
	}
	return edgevm_hc_sys_http_append(where, field, len);
}

__attribute__((weak)) long sys_http_set(int where, const char *field, size_t len)
{
	struct edgevm_io *io = edgevm_io_area();
	const int w = edgevm_io_where(where);
	if (io != NULL && w >= 0 && len <= 65535) {
		if (len == 0)
			return 0;
		size_t colon = 0;
		while (colon < len && field[colon] != ':')
			colon++;
		if (colon == len)
			return edgevm_io_unset(w, field, len);
		if (edgevm_io_validate(field, len) >= 0) {
			uint32_t *count, max;
			edgevm_io_table(w, &count, &max);
			if (*count < max) {
				edgevm_io_unset(w, field, colon);
				const long idx = edgevm_io_append(io, w, field, len);
				if (idx >= 0)
					return idx;
			}
		}
	}
	return edgevm_hc_sys_http_set(where, field, len);
}

__attribute__((weak)) unsigned
sys_http_find(int where, const char *key, size_t key_len, char *outb, size_t outl)
{
	struct edgevm_io *io = edgevm_io_area();
	const int w = edgevm_io_where(where);
	if (io == NULL || w < 0 || !edgevm_io_valid_key(key, key_len))
		return edgevm_hc_sys_http_find(where, key, key_len, outb, outl);
	uint32_t *count, max;
	struct kvm_request_header *t = edgevm_io_table(w, &count, &max);
	for (uint32_t i = 0; i < *count && i < max; i++) {
		if (!edgevm_io_keyeq(&t[i], key, key_len))
			continue;
		const uint32_t len = t[i].field_len;
		if (outb == NULL)
			return len;
		if (len <= outl) {
			__builtin_memcpy(outb, t[i].field, len);
			return len;
		}
		return 0;
	}
	return 0;
}

__attribute__((weak)) unsigned long sys_http_method(char *outb, size_t outl)
{
	struct edgevm_io *io = edgevm_io_area();
	if (io == NULL)
		return edgevm_hc_sys_http_method(outb, outl);
	const struct kvm_request *r = (const struct kvm_request *)EDGEVM_IO_REQUEST;
	const size_t len = r->method_len;
	if (outb == NULL)
		return len;
	if (len <= outl) {
		__builtin_memcpy(outb, r->method, len);
		return len;
	}
	return 0;
}

#else /* KVM_API_FREESTANDING: the header calls are the hypercalls themselves */
EDGEVM_HYPERCALL_STUB(sys_http_append, EDGEVM_HYPERCALL_HTTP_APPEND);
EDGEVM_HYPERCALL_STUB(sys_http_set, EDGEVM_HYPERCALL_HTTP_SET);
EDGEVM_HYPERCALL_STUB(sys_http_find, EDGEVM_HYPERCALL_HTTP_FIND);
EDGEVM_HYPERCALL_STUB(sys_http_method, EDGEVM_HYPERCALL_HTTP_METHOD);
#endif /* KVM_API_FREESTANDING */

#endif /* KVM_API_ALREADY_DEFINED */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* EDGEVM_KVM_API_H */
