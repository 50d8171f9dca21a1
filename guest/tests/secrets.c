/* secrets.c: can one request read what another left behind? For the secrets tests in
   crates/edgevm/tests/all/hostile.rs. Handler for every method (set_backend_request):

   POST /<p>/plant?k=HEX  (body: the 16 raw secret bytes, HEX: the same 32 hex digits)
        writes the secret everywhere a request can: stack (the handler's frame and 256 KiB
        further down), heap (kept and freed chunks, a kept and a freed 1 MiB malloc, which
        glibc serves with mmap), .data and .bss, a kept and an unmapped mmap area, the brk
        heap, a response header, the response body, and at the moment of the final exit the
        general registers (rbx, rbp, r10-r15), xmm0-15 with the upper ymm halves (AVX) and the
        x87 stack. &fail=1: fail the request (crash) after planting instead of answering.
        &hold=MS: sleep MS milliseconds before answering (another VM can scan meanwhile).
   GET  /<p>/scan?k=HEX   (HEX: the 32 hex digits of the secret with every bit inverted)
        searches everything this request can read for the secret, raw and as hex text: the
        registers as they were when the handler was entered (general, RFLAGS, xmm/ymm, the
        FXSAVE image with the x87 stack and MXCSR), edgevm's user pages (0x5000-0x7000), the
        I/O area (0x20000-0x100000) and all program memory from 0x100000 to the top of the
        stack (found by asking the host which addresses it accepts), except the
        stack guard page and pages a read faults on (munmapped or PROT_NONE: skipped with a
        SIGSEGV handler, counted as unreadable). The secret itself is never stored: only its
        inversion is, and each expected byte is computed while comparing. Answers
        "clean scanned=N end=E unreadable=U" or "found K: where...".
   GET  /<p>/regtest?k=HEX  self-test of the register capture: puts the secret (inverted
        back) into rbx and xmm5, captures the registers the same way as at entry, scans the
        capture: must answer "found".
   GET  /<p>/layout  the address-space end the scan uses. */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul
#define STACK_SIZE (4ul << 20) /* layout.rs: STACK_SIZE */

/* ------------------------------------------------------------------------------------- */
/* Registers at handler entry                                                             */
/* ------------------------------------------------------------------------------------- */

struct regs_capture {
	uint64_t gpr[16]; /* rax rbx rcx rdx rsi rdi rbp rsp r8..r15 */
	uint64_t rflags;
	uint8_t xmm[16][16];
	uint8_t ymmh[16][16];
	uint8_t fx[512] __attribute__((aligned(64)));
} __attribute__((aligned(64)));

struct regs_capture entry_regs;
int have_avx;

void scan_handler(const struct kvm_request *req);
void scan_entry(const struct kvm_request *req);
void capture_regs(void);

/* capture_regs: store every register into entry_regs, preserving all but rax and flags.
   scan_entry: the request handler; captures the registers before any C code runs. */
#define CAPTURE_BODY                                                           \
	"mov %rax, entry_regs+0(%rip)\n\t"                                         \
	"mov %rbx, entry_regs+8(%rip)\n\t"                                         \
	"mov %rcx, entry_regs+16(%rip)\n\t"                                        \
	"mov %rdx, entry_regs+24(%rip)\n\t"                                        \
	"mov %rsi, entry_regs+32(%rip)\n\t"                                        \
	"mov %rdi, entry_regs+40(%rip)\n\t"                                        \
	"mov %rbp, entry_regs+48(%rip)\n\t"                                        \
	"mov %rsp, entry_regs+56(%rip)\n\t"                                        \
	"mov %r8, entry_regs+64(%rip)\n\t"                                         \
	"mov %r9, entry_regs+72(%rip)\n\t"                                         \
	"mov %r10, entry_regs+80(%rip)\n\t"                                        \
	"mov %r11, entry_regs+88(%rip)\n\t"                                        \
	"mov %r12, entry_regs+96(%rip)\n\t"                                        \
	"mov %r13, entry_regs+104(%rip)\n\t"                                       \
	"mov %r14, entry_regs+112(%rip)\n\t"                                       \
	"mov %r15, entry_regs+120(%rip)\n\t"                                       \
	"pushfq\n\tpop %rax\n\tmov %rax, entry_regs+128(%rip)\n\t"                \
	"movdqu %xmm0, entry_regs+136(%rip)\n\t"                                   \
	"movdqu %xmm1, entry_regs+152(%rip)\n\t"                                   \
	"movdqu %xmm2, entry_regs+168(%rip)\n\t"                                   \
	"movdqu %xmm3, entry_regs+184(%rip)\n\t"                                   \
	"movdqu %xmm4, entry_regs+200(%rip)\n\t"                                   \
	"movdqu %xmm5, entry_regs+216(%rip)\n\t"                                   \
	"movdqu %xmm6, entry_regs+232(%rip)\n\t"                                   \
	"movdqu %xmm7, entry_regs+248(%rip)\n\t"                                   \
	"movdqu %xmm8, entry_regs+264(%rip)\n\t"                                   \
	"movdqu %xmm9, entry_regs+280(%rip)\n\t"                                   \
	"movdqu %xmm10, entry_regs+296(%rip)\n\t"                                  \
	"movdqu %xmm11, entry_regs+312(%rip)\n\t"                                  \
	"movdqu %xmm12, entry_regs+328(%rip)\n\t"                                  \
	"movdqu %xmm13, entry_regs+344(%rip)\n\t"                                  \
	"movdqu %xmm14, entry_regs+360(%rip)\n\t"                                  \
	"movdqu %xmm15, entry_regs+376(%rip)\n\t"                                  \
	"cmpl $0, have_avx(%rip)\n\t"                                              \
	"je 1f\n\t"                                                                \
	"vextractf128 $1, %ymm0, entry_regs+392(%rip)\n\t"                         \
	"vextractf128 $1, %ymm1, entry_regs+408(%rip)\n\t"                         \
	"vextractf128 $1, %ymm2, entry_regs+424(%rip)\n\t"                         \
	"vextractf128 $1, %ymm3, entry_regs+440(%rip)\n\t"                         \
	"vextractf128 $1, %ymm4, entry_regs+456(%rip)\n\t"                         \
	"vextractf128 $1, %ymm5, entry_regs+472(%rip)\n\t"                         \
	"vextractf128 $1, %ymm6, entry_regs+488(%rip)\n\t"                         \
	"vextractf128 $1, %ymm7, entry_regs+504(%rip)\n\t"                         \
	"vextractf128 $1, %ymm8, entry_regs+520(%rip)\n\t"                         \
	"vextractf128 $1, %ymm9, entry_regs+536(%rip)\n\t"                         \
	"vextractf128 $1, %ymm10, entry_regs+552(%rip)\n\t"                        \
	"vextractf128 $1, %ymm11, entry_regs+568(%rip)\n\t"                        \
	"vextractf128 $1, %ymm12, entry_regs+584(%rip)\n\t"                        \
	"vextractf128 $1, %ymm13, entry_regs+600(%rip)\n\t"                        \
	"vextractf128 $1, %ymm14, entry_regs+616(%rip)\n\t"                        \
	"vextractf128 $1, %ymm15, entry_regs+632(%rip)\n\t"                        \
	"1:\n\t"                                                                   \
	"fxsave64 entry_regs+704(%rip)\n\t"

__asm__(".text\n"
	".globl scan_entry\n"
	".type scan_entry, @function\n"
	"scan_entry:\n\t"
	CAPTURE_BODY
	"jmp scan_handler\n"
	".size scan_entry, .-scan_entry\n"
	".globl capture_regs\n"
	".type capture_regs, @function\n"
	"capture_regs:\n\t"
	CAPTURE_BODY
	"ret\n"
	".size capture_regs, .-capture_regs\n");

_Static_assert(__builtin_offsetof(struct regs_capture, rflags) == 128, "layout");
_Static_assert(__builtin_offsetof(struct regs_capture, xmm) == 136, "layout");
_Static_assert(__builtin_offsetof(struct regs_capture, ymmh) == 392, "layout");
_Static_assert(__builtin_offsetof(struct regs_capture, fx) == 704, "layout");

/* ------------------------------------------------------------------------------------- */
/* Helpers                                                                                */
/* ------------------------------------------------------------------------------------- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* 32 hex digits into 16 bytes; 0 on success. */
static int parse_key(const char *url, uint8_t out[16])
{
	const char *k = query_param(url, "k");
	if (k == NULL)
		return -1;
	for (int i = 0; i < 16; i++) {
		const int h = hexval(k[2 * i]), l = hexval(k[2 * i + 1]);
		if (h < 0 || l < 0)
			return -1;
		out[i] = (uint8_t)(h << 4 | l);
	}
	return 0;
}

/* ------------------------------------------------------------------------------------- */
/* Planting                                                                               */
/* ------------------------------------------------------------------------------------- */

static uint8_t data_secret[64] = { 1, 2, 3 }; /* .data */
static uint8_t bss_secret[64];                /* .bss */
static void *kept_heap, *kept_big, *kept_mmap;

static void fill(void *p, size_t n, const uint8_t s[16])
{
	uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		b[i] = s[i % 16];
}

__attribute__((noinline)) static void plant_deep_stack(const uint8_t s[16])
{
	/* 256 KiB below the handler: past the stack pages edgevm copies back every time. */
	volatile uint8_t *deep = __builtin_alloca(256 << 10);
	for (size_t i = 0; i < (256u << 10); i += 4096)
		fill((void *)(deep + i), 64, s);
}

/* Answer with the secret in as many registers as possible at the final exit. */
__attribute__((noreturn)) static void respond_with_secret_registers(const uint8_t s[16], const char *body, size_t len)
{
	static const char ctype[] = "text/plain";
	static uint8_t s32[32] __attribute__((aligned(32)));
	static uint8_t x87[16];
	memcpy(s32, s, 16);
	memcpy(s32 + 16, s, 16);
	memcpy(x87, s, 10);
	uint64_t lo, hi;
	memcpy(&lo, s, 8);
	memcpy(&hi, s + 8, 8);
	const char *ctp = ctype;
	if (have_avx) {
		__asm__ volatile(
			"vmovdqa %0, %%ymm0\n\tvmovdqa %0, %%ymm1\n\tvmovdqa %0, %%ymm2\n\tvmovdqa %0, %%ymm3\n\t"
			"vmovdqa %0, %%ymm4\n\tvmovdqa %0, %%ymm5\n\tvmovdqa %0, %%ymm6\n\tvmovdqa %0, %%ymm7\n\t"
			"vmovdqa %0, %%ymm8\n\tvmovdqa %0, %%ymm9\n\tvmovdqa %0, %%ymm10\n\tvmovdqa %0, %%ymm11\n\t"
			"vmovdqa %0, %%ymm12\n\tvmovdqa %0, %%ymm13\n\tvmovdqa %0, %%ymm14\n\tvmovdqa %0, %%ymm15\n\t"
			: : "m"(s32));
	} else {
		__asm__ volatile(
			"movdqa %0, %%xmm0\n\tmovdqa %0, %%xmm1\n\tmovdqa %0, %%xmm2\n\tmovdqa %0, %%xmm3\n\t"
			"movdqa %0, %%xmm4\n\tmovdqa %0, %%xmm5\n\tmovdqa %0, %%xmm6\n\tmovdqa %0, %%xmm7\n\t"
			"movdqa %0, %%xmm8\n\tmovdqa %0, %%xmm9\n\tmovdqa %0, %%xmm10\n\tmovdqa %0, %%xmm11\n\t"
			"movdqa %0, %%xmm12\n\tmovdqa %0, %%xmm13\n\tmovdqa %0, %%xmm14\n\tmovdqa %0, %%xmm15\n\t"
			: : "m"(s32));
	}
	/* The x87 stack: eight copies of the secret's first 10 bytes. */
	__asm__ volatile("fninit\n\t"
		"fldt %0\n\tfldt %0\n\tfldt %0\n\tfldt %0\n\tfldt %0\n\tfldt %0\n\tfldt %0\n\tfldt %0"
		: : "m"(x87));
	/* General registers, then the response hypercall itself (the request's last exit). */
	__asm__ volatile(
		"mov %[lo], %%rbx\n\t"
		"mov %[lo], %%rbp\n\t"
		"mov %[hi], %%r10\n\t"
		"mov %[lo], %%r11\n\t"
		"mov %[hi], %%r12\n\t"
		"mov %[lo], %%r13\n\t"
		"mov %[hi], %%r14\n\t"
		"mov %[lo], %%r15\n\t"
		"mov $200, %%edi\n\t"
		"mov %[ct], %%rsi\n\t"
		"mov $10, %%edx\n\t"
		"mov %[body], %%rcx\n\t"
		"mov %[len], %%r8\n\t"
		"xor %%r9d, %%r9d\n\t"
		"mov $0x10010, %%eax\n\t"
		"out %%eax, $0\n\t"
		"ud2"
		:
		: [lo] "m"(lo), [hi] "m"(hi), [ct] "m"(ctp),
		  [body] "m"(body), [len] "m"(len)
		: "memory");
	__builtin_unreachable();
}

static void plant(const char *url, const struct kvm_request *req)
{
	uint8_t s[16];
	if (parse_key(url, s) != 0 || req->content_len != 16 || memcmp(req->content, s, 16) != 0) {
		respond(400, "plant needs k=HEX and the same 16 bytes as the body");
		return;
	}
	/* Stack: this frame and far below. */
	volatile uint8_t frame[256];
	fill((void *)frame, sizeof(frame), s);
	plant_deep_stack(s);
	/* Globals. */
	fill(data_secret, sizeof(data_secret), s);
	fill(bss_secret, sizeof(bss_secret), s);
	/* Heap: kept and freed, small and big (mmap'd by malloc). */
	kept_heap = malloc(100);
	fill(kept_heap, 100, s);
	void *freed = malloc(100);
	fill(freed, 100, s);
	free(freed);
	kept_big = malloc(1 << 20);
	fill(kept_big, 4096, s);
	void *freed_big = malloc(1 << 20);
	fill(freed_big, 4096, s);
	free(freed_big);
	/* mmap: kept and unmapped. */
	kept_mmap = mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (kept_mmap != MAP_FAILED)
		fill(kept_mmap, 64 << 10, s);
	void *gone = mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (gone != MAP_FAILED) {
		fill(gone, 64 << 10, s);
		munmap(gone, 64 << 10);
	}
	/* brk. */
	void *b = sbrk(4096);
	if (b != (void *)-1)
		fill(b, 4096, s);
	/* A response header (the I/O area). */
	char hex[40];
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", s[i]);
	char h[64];
	snprintf(h, sizeof(h), "X-Planted: %s", hex);
	http_append_str(RESP, h);
	const char *hold = query_param(url, "hold");
	if (hold != NULL) {
		const long ms = atol(hold);
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	if (query_param(url, "fail") != NULL) {
		volatile uintptr_t nowhere = 8;
		*(volatile int *)nowhere = 1;
	}
	/* The body: the secret, raw. */
	static uint8_t body[16];
	memcpy(body, s, 16);
	respond_with_secret_registers(s, (const char *)body, 16);
}

/* ------------------------------------------------------------------------------------- */
/* Scanning                                                                               */
/* ------------------------------------------------------------------------------------- */

static uint8_t inv[16]; /* the secret, inverted: the only form stored anywhere */
static char found[2048];
static size_t found_len;
static unsigned found_count;

static inline uint8_t raw_byte(int i)
{
	return (uint8_t)~inv[i];
}

static inline uint8_t hex_byte(int i)
{
	const uint8_t v = (uint8_t)~inv[i / 2];
	const uint8_t d = (i & 1) ? (v & 15) : (v >> 4);
	return (uint8_t)(d < 10 ? '0' + d : 'a' + d - 10);
}

/* Matches per place: "where=count" pairs, in order of first appearance. */
static struct {
	char what[48];
	unsigned count;
	uintptr_t first;
} places[64];
static unsigned nplaces;

static void note(const char *what, uintptr_t at)
{
	found_count++;
	for (unsigned i = 0; i < nplaces; i++) {
		if (strcmp(places[i].what, what) == 0) {
			places[i].count++;
			return;
		}
	}
	if (nplaces < sizeof(places) / sizeof(places[0])) {
		snprintf(places[nplaces].what, sizeof(places[0].what), "%s", what);
		places[nplaces].count = 1;
		places[nplaces].first = at;
		nplaces++;
	}
}

static void summarize(void)
{
	found_len = 0;
	for (unsigned i = 0; i < nplaces && found_len + 96 < sizeof(found); i++)
		found_len += (size_t)snprintf(found + found_len, sizeof(found) - found_len,
			" %s=%u@%#lx", places[i].what, places[i].count, (unsigned long)places[i].first);
}

static const char *region_of(const char *name, uintptr_t a);

static void scan_range(const char *name, const uint8_t *p, size_t n)
{
	const uint8_t r0 = raw_byte(0), h0 = hex_byte(0);
	for (size_t i = 0; i + 16 <= n; i++) {
		if (p[i] == r0) {
			int j = 1;
			while (j < 16 && p[i + j] == raw_byte(j))
				j++;
			if (j == 16)
				note(region_of(name, (uintptr_t)(p + i)), (uintptr_t)(p + i));
		}
		if (p[i] == h0 && i + 32 <= n) {
			int j = 1;
			while (j < 32 && p[i + j] == hex_byte(j))
				j++;
			if (j == 32)
				note(region_of(name, (uintptr_t)(p + i)), (uintptr_t)(p + i));
		}
	}
}

/* Registers: 8-byte halves count too (a general register holds at most 8 bytes). */
static void scan_regs(const char *name, const struct regs_capture *c)
{
	uint64_t lo = 0, hi = 0;
	for (int i = 0; i < 8; i++) {
		lo |= (uint64_t)raw_byte(i) << (8 * i);
		hi |= (uint64_t)raw_byte(8 + i) << (8 * i);
	}
	static const char *const names[16] = { "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
		"rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15" };
	char what[64];
	for (int i = 0; i < 16; i++) {
		if (c->gpr[i] == lo || c->gpr[i] == hi) {
			snprintf(what, sizeof(what), "%s.%s", name, names[i]);
			note(what, 0);
		}
	}
	if (c->rflags == lo || c->rflags == hi)
		note("rflags", 0);
	/* xmm, ymm upper halves and the FXSAVE image (x87 stack, xmm again, MXCSR) as bytes,
	   plus any 8-byte half anywhere. */
	snprintf(what, sizeof(what), "%s.vector", name);
	scan_range(what, (const uint8_t *)c->xmm, sizeof(c->xmm) + sizeof(c->ymmh) + sizeof(c->fx));
	const uint8_t *v = (const uint8_t *)c->xmm;
	for (size_t i = 0; i + 8 <= sizeof(c->xmm) + sizeof(c->ymmh) + sizeof(c->fx); i++) {
		uint64_t w;
		memcpy(&w, v + i, 8);
		if (w == lo || w == hi) {
			snprintf(what, sizeof(what), "%s.vector+%zu", name, i);
			note(what, 0);
		}
	}
}

static struct regs_capture at_entry;
extern char end[]; /* the linker's end of .bss: where the brk heap starts */
static uintptr_t heap_top, stack_guard;

/* Which part of memory an address is in (for "memory" matches). */
static const char *region_of(const char *name, uintptr_t a)
{
	if (strcmp(name, "memory") != 0)
		return name;
	if (a >= (uintptr_t)data_secret && a < (uintptr_t)data_secret + sizeof(data_secret))
		return "data";
	if (a >= (uintptr_t)bss_secret && a < (uintptr_t)bss_secret + sizeof(bss_secret))
		return "bss";
	if (a >= (uintptr_t)end && a < heap_top)
		return "heap";
	if (a >= heap_top && a < stack_guard)
		return "mmap";
	return "memory";
}

/* Pages the program cannot read (munmapped, PROT_NONE): a read faults, as on Linux. The
   scan skips them, page by page, with a SIGSEGV handler; `unreadable` counts them. */
static sigjmp_buf probe_jmp;
static size_t unreadable;

static void probe_fault(int sig)
{
	(void)sig;
	siglongjmp(probe_jmp, 1);
}

static int readable(uintptr_t page)
{
	if (sigsetjmp(probe_jmp, 0) != 0)
		return 0;
	(void)*(volatile const uint8_t *)page;
	return 1;
}

/* scan_range over the readable runs of pages in [from, to). */
static void scan_readable(uintptr_t from, uintptr_t to)
{
	struct sigaction sa = { 0 }, old;
	sa.sa_handler = probe_fault;
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGSEGV, &sa, &old);
	uintptr_t run = from;
	for (uintptr_t p = from & ~(PAGE - 1); p < to; p += PAGE) {
		const uintptr_t lo = p > from ? p : from, hi = p + PAGE < to ? p + PAGE : to;
		if (!readable(lo)) {
			if (lo > run)
				scan_range("memory", (const uint8_t *)run, lo - run);
			unreadable += hi - lo;
			run = hi;
		}
	}
	if (to > run)
		scan_range("memory", (const uint8_t *)run, to - run);
	sigaction(SIGSEGV, &old, NULL);
}

/* Scan [from, to) except the register captures (registers are reported as registers). */
static void scan_memory(uintptr_t from, uintptr_t to)
{
	const uintptr_t skip[2][2] = {
		{ (uintptr_t)&entry_regs, (uintptr_t)&entry_regs + sizeof(entry_regs) },
		{ (uintptr_t)&at_entry, (uintptr_t)&at_entry + sizeof(at_entry) },
	};
	uintptr_t at = from;
	for (;;) {
		uintptr_t next = to, resume = to;
		for (int i = 0; i < 2; i++) {
			if (skip[i][1] > at && skip[i][0] < next) {
				next = skip[i][0] > at ? skip[i][0] : at;
				resume = skip[i][1];
			}
		}
		if (next > at)
			scan_readable(at, next);
		if (resume >= to)
			break;
		at = resume;
	}
}

void scan_handler(const struct kvm_request *req)
{
	/* Keep the entry capture before anything else can run. */
	at_entry = entry_regs;
	const char *url = req->url;
	char out[4096];
	if (strstr(url, "/plant") != NULL) {
		plant(url, req);
		return;
	}
	if (strstr(url, "/exits") != NULL) {
		/* Zero every vector register, make 200 system calls and 200 hypercalls without
		   touching them, then look: anything non-zero came from outside the guest. */
		__asm__ volatile(
			"vzeroall\n\t"
			"mov $200, %%ebx\n"
			"1:\n\t"
			"mov $39, %%eax\n\tsyscall\n\t"
			"mov $0x7FDEB, %%eax\n\tout %%eax, $0\n\t"
			"dec %%ebx\n\tjnz 1b\n\t"
			"call capture_regs"
			: : : "rax", "rbx", "rcx", "r11", "memory", "cc");
		const uint8_t *v = (const uint8_t *)entry_regs.xmm;
		unsigned dirty = 0;
		for (size_t i = 0; i < sizeof(entry_regs.xmm) + sizeof(entry_regs.ymmh); i++)
			dirty += v[i] != 0;
		snprintf(out, sizeof(out), "vector bytes non-zero after 400 exits: %u", dirty);
		respond(200, out);
		return;
	}
	if (strstr(url, "/layout") != NULL) {
		snprintf(out, sizeof(out), "end=%#lx avx=%d", memory_end(), have_avx);
		respond(200, out);
		return;
	}
	if (parse_key(url, inv) != 0) {
		respond(400, "scan needs k=HEX (the inverted secret)");
		return;
	}
	found_len = 0;
	found_count = 0;
	nplaces = 0;
	found[0] = 0;
	if (strstr(url, "/regtest") != NULL) {
		uint64_t lo = 0;
		for (int i = 0; i < 8; i++)
			lo |= (uint64_t)raw_byte(i) << (8 * i);
		uint8_t s[16];
		for (int i = 0; i < 16; i++)
			s[i] = raw_byte(i);
		__asm__ volatile("mov %0, %%rbx\n\tmovdqu %1, %%xmm5\n\tcall capture_regs"
			: : "r"(lo), "m"(s) : "rbx", "rax", "xmm5", "memory", "cc");
		scan_regs("regtest", &entry_regs);
		summarize();
		snprintf(out, sizeof(out), "%s %u:%s", found_count ? "found" : "clean", found_count, found);
		respond(200, out);
		return;
	}
	scan_regs("entry", &at_entry);
	const unsigned long mem_end = memory_end();
	const unsigned long guard = mem_end - STACK_SIZE - PAGE;
	heap_top = (uintptr_t)sbrk(0);
	stack_guard = guard;
	scan_range("stubs", (const uint8_t *)0x5000ul, 0x2000);
	scan_range("io", (const uint8_t *)0x20000ul, 0x100000 - 0x20000);
	unreadable = 0;
	scan_memory(0x100000ul, guard);
	scan_range("stack", (const uint8_t *)(guard + PAGE), mem_end - guard - PAGE);
	const size_t scanned = 0x2000 + (0x100000 - 0x20000) + (mem_end - 0x100000 - PAGE) - unreadable;
	summarize();
	if (found_count)
		snprintf(out, sizeof(out), "found %u:%s", found_count, found);
	else
		snprintf(out, sizeof(out), "clean scanned=%zu end=%#lx unreadable=%zu", scanned, mem_end, unreadable);
	respond(200, out);
}

int main(void)
{
	unsigned a, b, c, d;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	if ((c & (1u << 27)) && (c & (1u << 28))) {
		unsigned lo, hi;
		__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
		have_avx = (lo & 6) == 6;
	}
	set_backend_request(scan_entry);
	wait_for_requests();
	return 0;
}
