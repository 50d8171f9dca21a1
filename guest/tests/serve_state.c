/* serve_state.c: per-request state isolation probe for the `edgevm serve`
   tests. main() sets up state with known values; every GET reports what it
   saw *before* writing, then changes all of it:

     counter      a global int                  (frozen value 0)
     heap         a long malloc'ed in main()    (frozen value 1000)
     stack        bytes of a handler-local array still holding main()'s
                  stack paint 0xAB              (frozen value 4096)
     static_bad   pages of a 64-page static array that differ from main()'s
                  pattern                       (frozen value 0)
     buf_bad      the same for a 64-page malloc'ed buffer (frozen value 0)
     brk          sbrk(0) at entry; mmap: address of a fresh 1 MiB mmap
                  (both leaked; identical in every request when reset)

   URL words (anywhere in the URL):
     leak_malloc  malloc(10 MiB), touch it, leak it
     leak_brk     sbrk(10 MiB), touch it, leak it
     dirty=N      additionally write N pages of an 8 MiB buffer from main()

   Environment: MAKE_EPHEMERAL=N makes main() call sys_make_ephemeral(N);
   the result is reported as make_ephemeral= (-2 when not called). */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 64
#define PAGE 4096
#define DIRTY_BYTES (8u << 20)
#define LEAK_BYTES (10u << 20)

static int counter;
static unsigned char big_static[PAGES * PAGE];
static long *heap_obj;
static unsigned char *heap_buf;
static unsigned char *dirty_buf;
static int make_eph_result = -2;

static unsigned char static_pattern(size_t p, size_t i) { return (unsigned char)(p * 7 + i); }
static unsigned char heap_pattern(size_t p, size_t i) { return (unsigned char)(p * 13 + i + 1); }

/* Paint the stack below main()'s frame, where request handlers will run. */
__attribute__((noinline)) static void paint_stack(void)
{
	volatile unsigned char area[128 * 1024];
	for (size_t i = 0; i < sizeof(area); i++)
		area[i] = 0xAB;
}

static void respond_text(int status, const char *text)
{
	backend_response(status, "text/plain", 10, text, strlen(text));
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	/* Deliberately read before written: it holds whatever the frozen stack
	   had there (main()'s paint), or a previous request's writes. */
	volatile unsigned char probe[PAGE];
	size_t stack_ab = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
	for (size_t i = 0; i < sizeof(probe); i++)
		stack_ab += probe[i] == 0xAB;
#pragma GCC diagnostic pop

	const int c = counter;
	const long h = *heap_obj;
	unsigned static_bad = 0, buf_bad = 0;
	for (size_t p = 0; p < PAGES; p++) {
		for (size_t i = 0; i < PAGE; i++) {
			if (big_static[p * PAGE + i] != static_pattern(p, i)) {
				static_bad++;
				break;
			}
		}
		for (size_t i = 0; i < PAGE; i++) {
			if (heap_buf[p * PAGE + i] != heap_pattern(p, i)) {
				buf_bad++;
				break;
			}
		}
	}
	void *const brk0 = sbrk(0);
	unsigned char *m = mmap(NULL, 1u << 20, PROT_READ | PROT_WRITE,
		MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		respond_text(500, "mmap failed");
		return;
	}
	m[0] = 1;

	if (strstr(url, "leak_malloc")) {
		unsigned char *p = malloc(LEAK_BYTES);
		if (p == NULL) {
			respond_text(500, "leak_malloc: malloc failed");
			return;
		}
		memset(p, 0x77, LEAK_BYTES);
	}
	if (strstr(url, "leak_brk")) {
		unsigned char *p = sbrk(LEAK_BYTES);
		if (p == (void *)-1) {
			respond_text(500, "leak_brk: sbrk failed");
			return;
		}
		memset(p, 0x66, LEAK_BYTES);
	}
	const char *d = strstr(url, "dirty=");
	if (d != NULL) {
		size_t n = strtoul(d + 6, NULL, 10);
		if (n > DIRTY_BYTES / PAGE)
			n = DIRTY_BYTES / PAGE;
		for (size_t p = 0; p < n; p++)
			dirty_buf[p * PAGE] ^= 0xFF;
	}

	/* Now change everything. */
	counter = c + 1;
	*heap_obj = h + 1;
	memset(big_static, 0xEE, sizeof(big_static));
	memset(heap_buf, 0xEE, PAGES * PAGE);
	for (size_t i = 0; i < sizeof(probe); i++)
		probe[i] = 0x11;

	char out[512];
	const int len = snprintf(out, sizeof(out),
		"counter=%d heap=%ld stack=%zu static_bad=%u buf_bad=%u brk=%p mmap=%p make_ephemeral=%d\n",
		c, h, stack_ab, static_bad, buf_bad, brk0, (void *)m, make_eph_result);
	backend_response(200, "text/plain", 10, out, (size_t)len);
}

int main(void)
{
	const char *e = getenv("MAKE_EPHEMERAL");
	if (e != NULL)
		make_eph_result = sys_make_ephemeral(atoi(e));
	heap_obj = malloc(sizeof(*heap_obj));
	heap_buf = malloc(PAGES * PAGE);
	dirty_buf = malloc(DIRTY_BYTES);
	if (heap_obj == NULL || heap_buf == NULL || dirty_buf == NULL)
		return 1;
	*heap_obj = 1000;
	for (size_t p = 0; p < PAGES; p++) {
		for (size_t i = 0; i < PAGE; i++) {
			big_static[p * PAGE + i] = static_pattern(p, i);
			heap_buf[p * PAGE + i] = heap_pattern(p, i);
		}
	}
	memset(dirty_buf, 1, DIRTY_BYTES);
	set_backend_get(on_get);
	paint_stack(); /* last: nothing may use the stack after it */
	wait_for_requests();
	return 0;
}
