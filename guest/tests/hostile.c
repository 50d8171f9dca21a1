/* hostile.c: a hostile program with many modes, for the hostile-program suite
   (crates/edgevm/tests/all/hostile.rs) and the soak test. The mode is the second path
   segment: GET /<program>/<mode>?<query>. Every mode tries to hurt the server, escape the VM
   or leave something behind for the next request; the tests check that each is contained.

   probe          200 "probe ..." : a fingerprint of the state every request must start
                  from (globals, code bytes, a heap object from main(), brk, the FS/GS
                  bases, MXCSR, the x87 control word). Identical on every request of an
                  ephemeral program.
   ok             200 "ok"
   loop           spins forever
   malloc_bomb    malloc(1 MiB) and touch every page until malloc fails: 507 "... N MiB"
   mmap_bomb      the same with mmap
   brk_bomb       the same with sbrk
   touch_all      writes every page above the heap, allocated or not, up to the stack
   stack_overflow unbounded recursion
   stack_clash    alloca(8 MiB) past the stack guard, writes there, answers 200
   fork_bomb / vfork_bomb / clone_bomb / thread_bomb [?n=N]
                  N (1000) fork()s / vforks / clone()s / pthread_create()s (the threads
                  wait forever): 200 "... K of N succeeded, errno E"
   fork_forever   for (;;) fork();  (never answers)
   jump_garbage / jump_zero / jump_unmapped / jump_noncanonical / jump_kernel /
   jump_supervisor / jump_syscall_stub / jump_trampoline / jump_entry_stub
                  calls into random bytes, address 0, beyond memory, a non-canonical
                  address, the kernel half, the CPL0 exception stubs, edgevm's user stubs
   write_code     overwrites probe_value()'s code so it returns 666 and calls it: a
                  page fault (code pages are read-only); the next request must see 42
   write_rodata   overwrites a string literal: a page fault (read-only)
   write_stubs / write_fxsave / write_gdt / write_pagetables
                  writes edgevm's read-only user pages / supervisor pages
   write_io       fills the whole I/O area (request data, header tables) with garbage,
                  then answers
   priv?insn=X    one privileged or unusual instruction (see insns[] below)
   api?call=N&cls=C
                  kvm_api hypercall N (hex) with every pointer argument of class C and
                  every length argument of class C (see classes[] below); 200 "rax=..."
                  if the program survived the call
   sys?nr=N&cls=C the same for Linux system call N (decimal)
   big_response?mb=N
                  a response body of N MiB (of the program's own memory)
   many_headers?n=N  N http_append() calls of distinct headers, then 200
   extra_headers?n=N backend_response with BackendResponseExtra.num_headers = N
   bad_headers    corrupts the response-header table in the I/O area (counts, wild
                  pointers, huge lengths), then answers
   status?n=N     backend_response(N, ...)
   huge_ctype     a content type of 100000 bytes
   wait           wait_for_requests() during a request
   wait_paused    wait_for_requests_paused() during a request
   register       register_func(GET, another function) during a request: 200 "r=..."
   make_ephemeral sys_make_ephemeral(0) during a request: 200 "r=..."
   storage_allow  STORAGE_ALLOW() during a request: 200 "r=..."
   storage_return / storage_noreturn   storage_return()/storage_noreturn() in a request
   storage_call   storage_call() (program without storage: -1)
   sto?fn=F       (programs with storage) storage_call(F): F = wait, respond, recurse,
                  register, loop, crash, count; 200 "r=... count=..."
   guess_read?addr=X  reads guest address X (hex): host addresses, other VMs' guesses
   guess_sys      asks the host to read 2^47 / 2^36 guessed addresses (rt_sigaction) and
                  reports how many were accepted outside the program's own memory
   fsgs?fs=X&gs=Y writes the FS/GS bases with wrfsbase/wrgsbase (kvm_pvm lets CPL3 do it)
   fpu_dirty      leaves unusual MXCSR and x87 control words behind, then answers */
#define _GNU_SOURCE
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096ul

/* ------------------------------------------------------------------------------------- */
/* Frozen state the probe fingerprints                                                    */
/* ------------------------------------------------------------------------------------- */

static unsigned char globals[16 * PAGE];
static long *heap_obj;
static const char rodata_text[] = "read-only text of hostile.c";

__attribute__((noinline, aligned(64))) static int probe_value(void)
{
	__asm__ volatile("" ::: "memory");
	return 42;
}

static unsigned long long fnv(const void *p, size_t n, unsigned long long h)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static void respondf(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void respondf(int status, const char *fmt, ...)
{
	static char out[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out, sizeof(out), fmt, ap);
	va_end(ap);
	respond(status, out);
}

static unsigned long fs_base(void)
{
	unsigned long v = 0;
	syscall(SYS_arch_prctl, 0x1003, &v);
	return v;
}

static unsigned long gs_base(void)
{
	unsigned long v = 0;
	syscall(SYS_arch_prctl, 0x1004, &v);
	return v;
}

static void mode_probe(void)
{
	unsigned int mxcsr;
	unsigned short fcw;
	__asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fcw));
	const unsigned long long g = fnv(globals, sizeof(globals), 0xcbf29ce484222325ull);
	const unsigned long long code = fnv((const void *)probe_value, 64, 0xcbf29ce484222325ull);
	volatile double third = 1.0;
	third /= 3.0; /* inexact: faults if the request runs with SIMD exceptions unmasked */
	respondf(200,
		"probe value=%d globals=%016llx code=%016llx heap=%ld rodata=%s brk=%p fs=%lx gs=%lx "
		"mxcsr=%x fcw=%x third=%.3f vcpu=%d",
		probe_value(), g, code, *heap_obj, rodata_text, sbrk(0), fs_base(), gs_base(), mxcsr,
		fcw, third, vcpuid());
}

/* ------------------------------------------------------------------------------------- */
/* Helpers                                                                                */
/* ------------------------------------------------------------------------------------- */

static char url_copy[4096];

static const char *param(const char *key)
{
	return query_param(url_copy, key);
}

static unsigned long long param_u(const char *key, int base, unsigned long long dflt)
{
	const char *v = param(key);
	return v ? strtoull(v, NULL, base) : dflt;
}

static void param_s(const char *key, char *out, size_t n)
{
	const char *v = param(key);
	size_t i = 0;
	while (v && v[i] && v[i] != '&' && i + 1 < n) {
		out[i] = v[i];
		i++;
	}
	out[i] = 0;
}

/* ------------------------------------------------------------------------------------- */
/* Memory bombs                                                                           */
/* ------------------------------------------------------------------------------------- */

static void touch(unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i += PAGE)
		p[i] = 1;
}

static void mode_malloc_bomb(void)
{
	size_t mb = 0;
	for (;;) {
		unsigned char *p = malloc(1 << 20);
		if (p == NULL)
			break;
		touch(p, 1 << 20);
		mb++;
	}
	respondf(507, "malloc_bomb: malloc failed after %zu MiB", mb);
}

static void mode_mmap_bomb(void)
{
	size_t mb = 0;
	for (;;) {
		unsigned char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			break;
		touch(p, 1 << 20);
		mb++;
	}
	respondf(507, "mmap_bomb: mmap failed after %zu MiB", mb);
}

static void mode_brk_bomb(void)
{
	size_t mb = 0;
	for (;;) {
		unsigned char *p = sbrk(1 << 20);
		if (p == (void *)-1)
			break;
		touch(p, 1 << 20);
		mb++;
	}
	respondf(507, "brk_bomb: sbrk failed after %zu MiB", mb);
}

static void mode_touch_all(void)
{
	/* Everything above the heap: memory never allocated, the mmap area, the request-body
	   area, up to the stack guard page (which faults). */
	volatile unsigned char *p = (unsigned char *)(((unsigned long)sbrk(0) + PAGE) & ~(PAGE - 1));
	for (;; p += PAGE)
		*p = 1;
}

#pragma GCC diagnostic ignored "-Winfinite-recursion"
#pragma GCC diagnostic ignored "-Warray-bounds"
__attribute__((noinline)) static int recurse(int depth)
{
	volatile char frame[4096];
	frame[0] = (char)depth;
	return recurse(depth + 1) + frame[0];
}

static void mode_stack_overflow(void)
{
	respondf(200, "FAIL survived %d", recurse(0));
}

static void mode_stack_clash(void)
{
	/* Jump over the guard page with one big frame (no stack probes): the writes land in
	   the memory below the stack. */
	volatile unsigned char *p = __builtin_alloca(8 << 20);
	p[0] = 1;
	p[4096] = 2;
	respondf(200, "stack_clash wrote at %p", (void *)p);
}

/* ------------------------------------------------------------------------------------- */
/* Process bombs                                                                          */
/* ------------------------------------------------------------------------------------- */

static int never_changes;

/* A thread that waits forever (a futex nobody wakes): bombs pile up threads. */
static void *thread_fn(void *arg)
{
	for (;;)
		syscall(SYS_futex, &never_changes, FUTEX_WAIT, 0, NULL, NULL, 0);
	return arg;
}

static int clone_fn(void *arg)
{
	thread_fn(arg);
	return 0;
}

static void mode_bomb(const char *kind)
{
	const int n = (int)param_u("n", 10, 1000);
	int ok = 0, last_err = 0;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 << 10);
	for (int i = 0; i < n; i++) {
		long r;
		if (strcmp(kind, "fork") == 0) {
			r = fork();
		} else if (strcmp(kind, "vfork") == 0) {
			r = syscall(SYS_vfork);
		} else if (strcmp(kind, "clone") == 0) {
			/* Raw clone() threads, each on its own small stack. */
			char *stack = malloc(64 << 10);
			r = clone(clone_fn, stack + (64 << 10), CLONE_VM | CLONE_FS | CLONE_FILES |
				CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM, NULL);
			if (r <= 0)
				free(stack);
		} else {
			pthread_t t;
			r = pthread_create(&t, &attr, thread_fn, NULL);
			if (r != 0) {
				errno = (int)r;
				r = -1;
			} else {
				r = 1;
			}
		}
		if (r == 0) {
			/* A forked child that really runs: answer from here to make it visible,
			   whatever the parent does. */
			respondf(200, "FAIL %s child running", kind);
		}
		if (r > 0)
			ok++;
		else
			last_err = errno;
	}
	respondf(200, "%s_bomb: %d of %d succeeded, errno %d", kind, ok, n, last_err);
}

static void mode_fork_forever(void)
{
	for (;;)
		fork();
}

/* ------------------------------------------------------------------------------------- */
/* Wild jumps                                                                             */
/* ------------------------------------------------------------------------------------- */

typedef void (*fn_t)(void);

static void jump_to(unsigned long addr)
{
	((fn_t)addr)();
	respondf(200, "FAIL returned from %#lx", addr);
}

static void mode_jump_garbage(void)
{
	unsigned char *code = malloc(64 * 1024);
	unsigned long long x = param_u("seed", 10, 1) * 2654435761ull + 7;
	for (size_t i = 0; i < 64 * 1024; i++) {
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		code[i] = (unsigned char)((x * 0x2545F4914F6CDD1Dull) >> 56);
	}
	jump_to((unsigned long)code);
}

static void mode_jump_entry_stub(void)
{
	/* The request entry stub with a garbage handler in r11 and a garbage r10. */
	__asm__ volatile(
		"mov $0xdeadbeef000, %%r11\n\t"
		"mov $0x2, %%r10\n\t"
		"jmp *%0" : : "r"((unsigned long)0x5040) : "r10", "r11", "memory");
}

static void mode_jump_syscall_stub(void)
{
	/* The SYSCALL entry stub entered by a plain jump, with a garbage return address. */
	__asm__ volatile(
		"mov $39, %%eax\n\t"
		"mov $0xdeadbeef000, %%rcx\n\t"
		"mov $0x202, %%r11\n\t"
		"jmp *%0" : : "r"((unsigned long)0x5000) : "rax", "rcx", "r11", "memory");
}

/* ------------------------------------------------------------------------------------- */
/* Writing where one must not                                                             */
/* ------------------------------------------------------------------------------------- */

static void mode_write_code(void)
{
	/* mov $666,%eax; ret */
	static const unsigned char patch[] = { 0xB8, 0x9A, 0x02, 0x00, 0x00, 0xC3 };
	volatile unsigned char *code = (unsigned char *)(unsigned long)probe_value;
	for (size_t i = 0; i < sizeof(patch); i++)
		code[i] = patch[i];
	int (*volatile f)(void) = probe_value;
	respondf(200, "value=%d", f());
}

static void mode_write_rodata(void)
{
	volatile char *p = (char *)(unsigned long)rodata_text;
	memcpy((char *)p, "OVERWRITTEN", 11);
	respondf(200, "rodata=%s", rodata_text);
}

static void mode_write_at(unsigned long addr)
{
	*(volatile unsigned long *)addr = 0x4141414141414141ul;
	respondf(200, "FAIL wrote %#lx", addr);
}

static void mode_write_io(void)
{
	unsigned long long x = 0x1234567;
	for (unsigned long a = 0x20000; a < 0x100000; a += 8) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		*(volatile unsigned long long *)a = x;
	}
	respond(200, "io area overwritten");
}

/* ------------------------------------------------------------------------------------- */
/* Privileged and unusual instructions                                                    */
/* ------------------------------------------------------------------------------------- */

static unsigned char zeros[64] __attribute__((aligned(16)));
static unsigned char garbage_xsave[4096] __attribute__((aligned(64)));
static unsigned char victim[3 * PAGE] __attribute__((aligned(PAGE)));
static unsigned long saved_rsp;

static void insn(const char *name)
{
#define I(n, ...)                                               \
	if (strcmp(name, n) == 0) {                                 \
		__asm__ volatile(__VA_ARGS__);                          \
		respondf(200, "survived %s", name);                     \
		return;                                                 \
	}
	I("hlt", "hlt")
	I("cli", "cli")
	I("sti", "sti")
	I("pushf_popf_iopl", "pushfq\n\torq $0x43000, (%%rsp)\n\tpopfq\n\tpushfq\n\tandq $~0x43000, (%%rsp)\n\tpopfq" ::: "memory", "cc")
	I("wrmsr_efer", "mov $0xc0000080, %%ecx\n\txor %%eax, %%eax\n\txor %%edx, %%edx\n\twrmsr" ::: "rax", "rcx", "rdx")
	I("wrmsr_lstar", "mov $0xc0000082, %%ecx\n\tmov $0x41414141, %%eax\n\txor %%edx, %%edx\n\twrmsr" ::: "rax", "rcx", "rdx")
	I("rdmsr", "mov $0xc0000082, %%ecx\n\trdmsr" ::: "rax", "rcx", "rdx")
	I("mov_cr3", "xor %%eax, %%eax\n\tmov %%rax, %%cr3" ::: "rax")
	I("read_cr3", "mov %%cr3, %%rax" ::: "rax")
	I("mov_cr0", "xor %%eax, %%eax\n\tmov %%rax, %%cr0" ::: "rax")
	I("mov_cr4", "xor %%eax, %%eax\n\tmov %%rax, %%cr4" ::: "rax")
	I("mov_dr7", "mov $0x3ff, %%eax\n\tmov %%rax, %%dr7" ::: "rax")
	I("lgdt", "lgdt %0" : : "m"(zeros))
	I("lidt", "lidt %0" : : "m"(zeros))
	I("sgdt", "sgdt %0" : "=m"(zeros))
	I("ltr", "mov $0x28, %%ax\n\tltr %%ax" ::: "rax")
	I("lldt", "xor %%eax, %%eax\n\tlldt %%ax" ::: "rax")
	I("clts", "clts")
	I("invlpg", "invlpg (%0)" : : "r"(zeros))
	I("wbinvd", "wbinvd")
	I("invd", "invd")
	I("rdpmc", "xor %%ecx, %%ecx\n\trdpmc" ::: "rax", "rcx", "rdx")
	I("swapgs", "swapgs")
	I("sysret", "sysretq")
	I("sysenter", "sysenter")
	I("sysexit", "sysexitq")
	I("iretq_garbage", "push $0\n\tpush $0\n\tpush $0\n\tpush $0\n\tpush $0\n\tiretq" ::: "memory")
	I("xsetbv", "xor %%ecx, %%ecx\n\tmov $1, %%eax\n\txor %%edx, %%edx\n\txsetbv" ::: "rax", "rcx", "rdx")
	I("xrstor_garbage", "mov $-1, %%eax\n\tmov $-1, %%edx\n\txrstor64 %0" : : "m"(garbage_xsave) : "rax", "rdx")
	I("ldmxcsr_reserved", "ldmxcsr %0" : : "m"(*(const unsigned int[]){ 0xffffffffu }))
	I("monitor", "lea %0, %%rax\n\txor %%ecx, %%ecx\n\txor %%edx, %%edx\n\tmonitor" : : "m"(zeros) : "rax", "rcx", "rdx")
	I("mwait", "xor %%eax, %%eax\n\txor %%ecx, %%ecx\n\tmwait" ::: "rax", "rcx")
	I("vmcall", "vmcall")
	I("vmmcall", "vmmcall" ::: "rax")
	I("vmlaunch", "vmlaunch")
	I("vmrun", "xor %%eax, %%eax\n\tvmrun" ::: "rax")
	I("int3", "int3")
	I("int1", ".byte 0xf1")
	I("int80", "int $0x80")
	I("int_pf", "int $14")
	I("int_df", "int $8")
	I("int_e1", "int $0xe1")
	I("int_ff", "int $0xff")
	I("ud2", "ud2")
	I("in_80", "in $0x80, %%al" ::: "rax")
	I("out_80", "out %%al, $0x80" ::: "memory")
	I("out_3f8", "mov $0x3f8, %%dx\n\tout %%al, (%%dx)" ::: "rdx")
	I("out_cf8", "mov $0xcf8, %%dx\n\tmov $0x80000000, %%eax\n\tout %%eax, (%%dx)" ::: "rax", "rdx")
	I("out_ffff", "mov $0xffff, %%dx\n\tout %%al, (%%dx)" ::: "rdx")
	I("out_e1", "mov $14, %%eax\n\tout %%al, $0xe1" ::: "rax")
	I("out_1", "out %%al, $1" ::: "memory")
	I("out_2w", "out %%ax, $2" ::: "memory")
	I("out_0_byte", "mov $0x10010, %%eax\n\tout %%al, $0" ::: "rax")
	I("in_0", "in $0, %%eax" ::: "rax")
	I("in_e0", "in $0xe0, %%al" ::: "rax")
	I("outs_0", "lea %0, %%rsi\n\tmov $16, %%ecx\n\txor %%edx, %%edx\n\trep outsl" : : "m"(zeros) : "rsi", "rcx", "rdx", "memory")
	I("outs_0_wild", "mov $0xdeadbeef000, %%rsi\n\tmov $100000, %%ecx\n\txor %%edx, %%edx\n\trep outsl" ::: "rsi", "rcx", "rdx", "memory")
	I("ins_0", "lea %0, %%rdi\n\tmov $16, %%ecx\n\txor %%edx, %%edx\n\trep insl" : "=m"(zeros) : : "rdi", "rcx", "rdx", "memory")
	I("ins_many", "mov %0, %%rdi\n\tmov $4096, %%ecx\n\txor %%edx, %%edx\n\trep insb" : : "r"(victim) : "rdi", "rcx", "rdx", "memory")
	I("ins_e0_wild", "mov $0x10000, %%rdi\n\tmov $4096, %%ecx\n\tmov $0xe0, %%edx\n\trep insb" ::: "rdi", "rcx", "rdx", "memory")
	I("mov_ss_null", "xor %%eax, %%eax\n\tmov %%eax, %%ss" ::: "rax")
	I("mov_ds_kernel", "mov $0x10, %%eax\n\tmov %%eax, %%ds" ::: "rax")
	I("mov_ss_kernel", "mov $0x10, %%eax\n\tmov %%eax, %%ss" ::: "rax")
	I("far_jmp_kernel", "push $0x08\n\tlea 1f(%%rip), %%rax\n\tpush %%rax\n\tlretq\n1:" ::: "rax", "memory")
	I("far_call_tss", "sub $16, %%rsp\n\tmovq $0, (%%rsp)\n\tmovw $0x28, 8(%%rsp)\n\tlcall *(%%rsp)\n\tadd $16, %%rsp" ::: "memory")
	I("lock_nop", ".byte 0xf0, 0x90")
	I("too_long", ".byte 0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x66,0x90")
	I("div_zero", "xor %%ecx, %%ecx\n\tmov $1, %%eax\n\txor %%edx, %%edx\n\tdiv %%ecx" ::: "rax", "rcx", "rdx")
	I("int_overflow", "mov $0x8000000000000000, %%rax\n\tcqo\n\tmov $-1, %%rcx\n\tidiv %%rcx" ::: "rax", "rcx", "rdx")
	I("simd_exception", "sub $8, %%rsp\n\tmovl $0x1f00, (%%rsp)\n\tandl $~0x200, (%%rsp)\n\tldmxcsr (%%rsp)\n\tadd $8, %%rsp\n\tpxor %%xmm0, %%xmm0\n\tmov $1, %%eax\n\tcvtsi2ss %%eax, %%xmm1\n\tdivss %%xmm0, %%xmm1" ::: "rax", "xmm0", "xmm1", "memory")
	I("x87_exception", "sub $8, %%rsp\n\tmovw $0x37a, (%%rsp)\n\tfldcw (%%rsp)\n\tadd $8, %%rsp\n\tfldz\n\tfld1\n\tfdivp\n\tfwait\n\tfstp %%st(0)" ::: "memory")
	I("align_check", "pushfq\n\torq $0x40000, (%%rsp)\n\tpopfq\n\tmov 1(%%rsp), %%rax\n\tpushfq\n\tandq $~0x40000, (%%rsp)\n\tpopfq" ::: "rax", "memory", "cc")
	I("trap_flag", "pushfq\n\torq $0x100, (%%rsp)\n\tpopfq\n\tnop\n\tnop" ::: "memory", "cc")
	I("wrfsbase_noncanonical", "mov $0x8000000000000000, %%rax\n\twrfsbase %%rax" ::: "rax")
	I("wrgsbase_kernel", "mov $0x1000, %%rax\n\twrgsbase %%rax\n\tmov %%gs:0, %%rax" ::: "rax")
	I("syscall_garbage",
		"mov %%rsp, %0\n\t"
		"mov $0xdeadbeefdeadbeef, %%rax\n\tmov %%rax, %%rbx\n\tmov %%rax, %%rcx\n\tmov %%rax, %%rdx\n\t"
		"mov %%rax, %%rsi\n\tmov %%rax, %%rdi\n\tmov %%rax, %%rbp\n\tmov %%rax, %%rsp\n\t"
		"mov %%rax, %%r8\n\tmov %%rax, %%r9\n\tmov %%rax, %%r10\n\tmov %%rax, %%r11\n\t"
		"mov %%rax, %%r12\n\tmov %%rax, %%r13\n\tmov %%rax, %%r14\n\tmov %%rax, %%r15\n\t"
		"syscall\n\t"
		"mov %0, %%rsp" : "=m"(saved_rsp) : : "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "memory")
	I("syscall_garbage_nr",
		"mov $0x4000000000000027, %%rax\n\tsyscall" ::: "rax", "rcx", "r11", "memory")
	I("fake_syscall_wild_rip",
		"mov $39, %%eax\n\tmov $0x8000000000000000, %%rcx\n\tmov $0x202, %%r11\n\tout %%al, $0xe0" ::: "rax", "rcx", "r11", "memory")
	I("fake_syscall_kernel_rip",
		"mov $39, %%eax\n\tmov $0x4000, %%rcx\n\tmov $0x202, %%r11\n\tout %%al, $0xe0" ::: "rax", "rcx", "r11", "memory")
	I("fake_syscall_flags",
		"mov $39, %%eax\n\tlea 1f(%%rip), %%rcx\n\tmov $-1, %%r11\n\tout %%al, $0xe0\n1:\n\t"
		"pushfq\n\tandq $0x8d5, (%%rsp)\n\torq $0x200, (%%rsp)\n\tpopfq" ::: "rax", "rcx", "r11", "memory", "cc")
	I("outs_forever", "lea %0, %%rsi\n\tmov $1, %%rcx\n\tshl $40, %%rcx\n\txor %%edx, %%edx\n\tstd\n\trep outsl\n\tcld" : : "m"(zeros) : "rsi", "rcx", "rdx", "memory")
	I("outs_wait", "lea %0, %%rsi\n\tmovl $0x10001, (%%rsi)\n\tmov $2, %%ecx\n\txor %%edx, %%edx\n\trep outsl" : : "m"(zeros) : "rsi", "rcx", "rdx", "memory")
	I("outs_wait1", "lea %0, %%rsi\n\tmovl $0x10001, (%%rsi)\n\txor %%edx, %%edx\n\toutsl" : : "m"(zeros) : "rsi", "rdx", "memory")
	I("outs_respond",
		"lea %0, %%rsi\n\tmovl $0x10010, (%%rsi)\n\tmov $200, %%edi\n\txor %%edx, %%edx\n\t"
		"lea %0, %%rcx\n\tmov $4, %%r8d\n\txor %%r9d, %%r9d\n\toutsl"
		: : "m"(zeros) : "rsi", "rdi", "rcx", "rdx", "r8", "r9", "memory")
	I("fake_syscall_rflags",
		"mov $39, %%eax\n\tlea 1f(%%rip), %%rcx\n\tmov $~0x40100, %%r11\n\tout %%al, $0xe0\n1:\n\t"
		"pushfq\n\tandq $0x8d5, (%%rsp)\n\torq $0x200, (%%rsp)\n\tpopfq" ::: "rax", "rcx", "r11", "memory", "cc")
	I("fake_hypercall_garbage",
		"mov $0xdeadbeef, %%eax\n\tout %%eax, $0" ::: "rax", "memory")
#undef I
	respondf(400, "unknown instruction %s", name);
}

/* ------------------------------------------------------------------------------------- */
/* API and system calls with hostile arguments                                            */
/* ------------------------------------------------------------------------------------- */


/* A pointer of class `cls`, and the length to go with it. */
static int pointer_class(const char *cls, unsigned long *p, unsigned long *len)
{
	static const struct {
		const char *name;
		unsigned long p, len;
	} fixed[] = {
		{ "null", 0, 16 },
		{ "one", 1, 16 },
		{ "wild", 0xdeadbeef000ul, 16 },
		{ "kernel", 0xffffffff81000000ul, 16 },
		{ "noncanonical", 0x8000000000000000ul, 16 },
		{ "top", 0xfffffffffffffff0ul, 0x20 },
		{ "gdt", 0x1000, 16 },
		{ "idt", 0x3000, 16 },
		{ "stubs", 0x5000, 16 },
		{ "pagetables", 0x10000, 16 },
		{ "io_table", 0x23000, 64 },
		{ "io_request", 0x23800, 88 },
		{ "below_user", 0x1ffff8, 16 },
		{ "beyond", 0x100000000ul, 16 },
	};
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
		if (strcmp(cls, fixed[i].name) == 0) {
			*p = fixed[i].p;
			*len = fixed[i].len;
			return 1;
		}
	}
	/* A valid field text at odd alignment, so header calls reach their checks. */
	memcpy(victim + 1, "X-Hostile: 1", 13);
	if (strcmp(cls, "unaligned") == 0) {
		*p = (unsigned long)victim + 1;
		*len = 12;
	} else if (strcmp(cls, "overlap") == 0) {
		*p = (unsigned long)victim + 1; /* every pointer argument: the same bytes */
		*len = 2 * PAGE;
	} else if (strcmp(cls, "huge") == 0) {
		*p = (unsigned long)victim + 1;
		*len = 1ul << 40;
	} else if (strcmp(cls, "max") == 0) {
		*p = (unsigned long)victim + 1;
		*len = ~0ul;
	} else if (strcmp(cls, "negative") == 0) {
		*p = (unsigned long)victim + 1;
		*len = (unsigned long)-16;
	} else if (strcmp(cls, "stack") == 0) {
		*p = (unsigned long)__builtin_frame_address(0) - 64;
		*len = 4096;
	} else {
		return 0;
	}
	return 1;
}

/* Argument kinds of each call: p = pointer, l = length, i = a valid small integer, s = a
   status code, w = a header set (1 = RESP), 0 = zero. */
static const struct {
	unsigned num;
	const char *args;
} api_calls[] = {
	{ 0x10000, "ip" },     /* register_func(idx, f) */
	{ 0x10005, "iiii" },   /* set_cacheable */
	{ 0x10010, "splplp" }, /* backend_response(status, ctype, len, body, len, extra) */
	{ 0x10011, "pl" },     /* storage_return */
	{ 0x10012, "splpp" },  /* begin_streaming_response */
	{ 0x10013, "pl" },     /* storage_noreturn */
	{ 0x10020, "wpl" },    /* http_append */
	{ 0x10021, "wpl" },    /* http_set */
	{ 0x10022, "wplpl" },  /* http_find */
	{ 0x10023, "pl" },     /* http_method */
	{ 0x10030, "pl" },     /* regex_compile */
	{ 0x10031, "i" },      /* regex_free */
	{ 0x10032, "ipl" },    /* regex_match */
	{ 0x10033, "ipppli" }, /* regex_subst */
	{ 0x10035, "iii" },    /* regex_copyto */
	{ 0x10500, "ipl" },    /* sockets_write */
	{ 0x10700, "" },       /* shared_memory_area */
	{ 0x10703, "i" },      /* make_ephemeral */
	{ 0x10706, "" },       /* is_storage */
	{ 0x10707, "p" },      /* storage_allow */
	{ 0x10708, "plppl" },  /* storage_callv(func, n, bufs, dst, dstlen) */
	{ 0x10709, "pplii" },  /* storage_task */
	{ 0x1070A, "i" },      /* stop_storage_task */
	{ 0x10710, "lpp" },    /* multiprocess */
	{ 0x10711, "lppl" },   /* multiprocess_array */
	{ 0x10712, "lpl" },    /* multiprocess_clone */
	{ 0x10713, "" },       /* multiprocess_wait */
	{ 0x10A00, "p" },      /* get_meminfo */
	{ 0x20000, "plppp" },  /* fetch */
	{ 0x20001, "plppp" },  /* request */
	{ 0x7F000, "pl" },     /* log */
	{ 0x7F7F7, "" },       /* breakpoint */
	{ 0x7FDEB, "" },       /* is_debug */
};

static void fill_args(const char *kinds, unsigned long p, unsigned long len, unsigned long a[6])
{
	for (int i = 0; i < 6; i++) {
		const char k = kinds[0] ? *kinds++ : '0';
		switch (k) {
		case 'p': a[i] = p; break;
		case 'l': a[i] = len; break;
		case 's': a[i] = 200; break;
		case 'w': a[i] = 1; break;
		case 'i': a[i] = 1; break;
		default: a[i] = 0; break;
		}
	}
}

static void mode_api(void)
{
	char cls[32];
	param_s("cls", cls, sizeof(cls));
	const unsigned num = (unsigned)param_u("call", 16, 0);
	unsigned long p, len, a[6];
	if (!pointer_class(cls, &p, &len)) {
		respondf(400, "unknown class %s", cls);
		return;
	}
	const char *kinds = NULL;
	for (size_t i = 0; i < sizeof(api_calls) / sizeof(api_calls[0]); i++)
		if (api_calls[i].num == num)
			kinds = api_calls[i].args;
	if (kinds == NULL) {
		respondf(400, "unknown call %#x", num);
		return;
	}
	fill_args(kinds, p, len, a);
	const long r = hypercall6(num, a[0], a[1], a[2], a[3], a[4], a[5]);
	respondf(200, "rax=%ld", r);
}

/* System calls with pointer arguments, and their kinds. */
static const struct {
	long nr;
	const char *args;
} sys_calls[] = {
	{ SYS_read, "0pl" }, { SYS_write, "ipl" }, { SYS_writev, "ipl" }, { SYS_readv, "0pl" },
	{ SYS_pread64, "0pl0" }, { SYS_pwrite64, "ipl0" },
	{ SYS_poll, "pl0" }, { SYS_ppoll, "plpl" }, { SYS_fstat, "ip" }, { SYS_stat, "pp" },
	{ SYS_lstat, "pp" }, { SYS_newfstatat, "ppp0" }, { SYS_open, "p0" }, { SYS_openat, "ip0" },
	{ SYS_access, "p0" }, { SYS_mmap, "pl3200" }, { SYS_munmap, "pl" }, { SYS_mprotect, "pl0" },
	{ SYS_mremap, "pll1" }, { SYS_madvise, "pl4" }, { SYS_brk, "p" },
	{ SYS_rt_sigaction, "ipp8" }, { SYS_rt_sigprocmask, "0pp8" }, { SYS_sigaltstack, "pp" },
	{ SYS_uname, "p" }, { SYS_getcwd, "pl" }, { SYS_readlink, "ppl" }, { SYS_readlinkat, "ippl" },
	{ SYS_gettimeofday, "pp" }, { SYS_time, "p" }, { SYS_clock_gettime, "ip" },
	{ SYS_clock_getres, "ip" }, { SYS_nanosleep, "pp" }, { SYS_clock_nanosleep, "00pp" },
	{ SYS_futex, "p1i" }, { SYS_sched_getaffinity, "0lp" }, { SYS_getrlimit, "ip" },
	{ SYS_prlimit64, "0ipp" }, { SYS_getrandom, "pl0" }, { SYS_rseq, "pl0i" },
	{ SYS_set_tid_address, "p" }, { SYS_set_robust_list, "pl" }, { SYS_get_robust_list, "0pp" },
	{ SYS_execve, "ppp" }, { SYS_pipe, "p" }, { SYS_pipe2, "p0" }, { SYS_sysinfo, "p" },
	{ SYS_times, "p" }, { SYS_getrusage, "0p" }, { SYS_ioctl, "iip" }, { SYS_select, "lppp" },
	{ SYS_epoll_wait, "ipl0" }, { SYS_sendto, "ipl0pl" }, { SYS_recvfrom, "ipl0pp" },
	{ SYS_statx, "ip0ip" }, { SYS_arch_prctl, "ip" },
	{ SYS_process_vm_readv, "1plplo" }, { SYS_ptrace, "01pp" },
};

static void mode_sys(void)
{
	char cls[32];
	param_s("cls", cls, sizeof(cls));
	const long nr = (long)param_u("nr", 10, 0);
	unsigned long p, len, a[6];
	if (!pointer_class(cls, &p, &len)) {
		respondf(400, "unknown class %s", cls);
		return;
	}
	const char *kinds = NULL;
	for (size_t i = 0; i < sizeof(sys_calls) / sizeof(sys_calls[0]); i++)
		if (sys_calls[i].nr == nr)
			kinds = sys_calls[i].args;
	if (kinds == NULL) {
		respondf(400, "unknown system call %ld", nr);
		return;
	}
	fill_args(kinds, p, len, a);
	/* arch_prctl: SET_FS/SET_GS with the class pointer. */
	if (nr == SYS_arch_prctl)
		a[0] = param_u("code", 16, 0x1002);
	const long r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	const int e = errno;
	/* Put TLS back for the answer if the call moved it. */
	respondf(200, "r=%ld errno=%d", r, r < 0 ? e : 0);
}

/* ------------------------------------------------------------------------------------- */
/* Responses                                                                              */
/* ------------------------------------------------------------------------------------- */

static void mode_big_response(void)
{
	const size_t n = (size_t)param_u("mb", 10, 100) << 20;
	/* The program's own memory, from its first byte: no allocation needed. */
	backend_response(200, "application/octet-stream", 24, (const void *)0x200000ul, n);
	respondf(200, "FAIL big_response returned");
}

static void mode_many_headers(void)
{
	const unsigned n = (unsigned)param_u("n", 10, 10000);
	char h[64];
	unsigned done = 0;
	for (unsigned i = 0; i < n; i++) {
		const int l = snprintf(h, sizeof(h), "X-Hostile-%u: %u", i, i);
		if (sys_http_append(RESP, h, (size_t)l) > 0)
			done++;
	}
	respondf(200, "appended %u of %u", done, n);
}

static void mode_extra_headers(void)
{
	const unsigned n = (unsigned)param_u("n", 10, 10000);
	static struct ResponseHeader hs[10000];
	for (unsigned i = 0; i < n && i < 10000; i++) {
		hs[i].field = "X-Extra: 1";
		hs[i].field_len = 10;
	}
	struct BackendResponseExtra extra = { 0 };
	extra.headers = hs;
	extra.num_headers = (uint16_t)n;
	backend_response_extra(200, "text/plain", 10, "extra", 5, &extra);
	respondf(200, "FAIL extra_headers returned");
}

static void mode_bad_headers(void)
{
	volatile uint32_t *io = (uint32_t *)0x20000ul;
	struct kvm_request_header *t = (struct kvm_request_header *)0x23000ul;
	io[3] = 0xffffffffu; /* resp_count */
	io[5] = 0xffffffffu; /* resp_used */
	static const char ok_field[] = "X-Fine: yes";
	const char *ptrs[] = { NULL, (const char *)0xdeadbeef000ul, (const char *)0x1000ul,
		(const char *)0xffffffff81000000ul, ok_field, (const char *)0x23000ul };
	for (unsigned i = 0; i < 128; i++) {
		t[i].field = ptrs[i % 6];
		t[i].field_colon = i % 3 == 0 ? 0xffffffffu : 6;
		t[i].field_len = i % 4 == 0 ? 0xffffffffu : (i % 4 == 1 ? 65535u : 11u);
	}
	respond(200, "bad headers");
}

static void mode_huge_ctype(void)
{
	static char ctype[100000];
	memset(ctype, 'a', sizeof(ctype));
	backend_response(200, ctype, sizeof(ctype), "x", 1);
	respondf(200, "FAIL huge_ctype returned");
}

/* ------------------------------------------------------------------------------------- */
/* Calls from the wrong context                                                           */
/* ------------------------------------------------------------------------------------- */

static void other_handler(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	respond(200, "FAIL the handler table was changed");
}

static long storage_count;

static void sto_count(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	storage_count++;
	storage_return(&storage_count, sizeof(storage_count));
}

static void sto_wait(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	wait_for_requests();
	storage_return("FAIL", 4);
}

static void sto_respond(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	backend_response(200, "text/plain", 10, "FAIL from storage", 17);
	storage_return("FAIL", 4);
}

static void sto_recurse(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	long inner = 0;
	const long r = storage_call(sto_count, NULL, 0, &inner, sizeof(inner));
	storage_return(&r, sizeof(r));
}

static void sto_register(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	register_func(1, other_handler);
	long r = 0;
	storage_return(&r, sizeof(r));
}

static void sto_loop(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	for (;;)
		__asm__ volatile("");
}

static void sto_crash(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	*(volatile int *)8 = 1;
}

static void sto_noreturn(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	for (;;)
		storage_return(NULL, 0);
}

static void sto_in(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n; (void)buf; (void)res;
	unsigned v;
	__asm__ volatile("in $0, %%eax" : "=a"(v));
	storage_return(&v, sizeof(v));
}

static void mode_sto(void)
{
	char fn[32];
	param_s("fn", fn, sizeof(fn));
	static const struct {
		const char *name;
		storage_func f;
	} fns[] = {
		{ "count", sto_count }, { "wait", sto_wait }, { "respond", sto_respond },
		{ "recurse", sto_recurse }, { "register", sto_register }, { "loop", sto_loop },
		{ "crash", sto_crash }, { "noreturn", sto_noreturn }, { "in", sto_in },
	};
	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		if (strcmp(fn, fns[i].name) == 0) {
			long v = -2;
			const long r = storage_call(fns[i].f, NULL, 0, &v, sizeof(v));
			respondf(200, "r=%ld value=%ld", r, v);
			return;
		}
	}
	respondf(400, "unknown storage function %s", fn);
}

/* ------------------------------------------------------------------------------------- */
/* Guessing addresses                                                                     */
/* ------------------------------------------------------------------------------------- */

static void mode_guess_read(void)
{
	const unsigned long a = param_u("addr", 16, 0x7ffff7dd0000ul);
	const unsigned long v = *(volatile unsigned long *)a;
	respondf(200, "FAIL read %#lx = %#lx", a, v);
}

static void mode_guess_sys(void)
{
	/* The program's memory ends where the host stops accepting pointers. */
	const unsigned long end = memory_end();
	unsigned long accepted = 0, tried = 0, first = 0;
#define GUESS(a)                                        \
	do {                                                \
		tried++;                                        \
		if (host_reads(a) && accepted++ == 0)           \
			first = (a);                                \
	} while (0)
	/* Every 2^36 up to 2^47, the typical host mappings and the kernel half. */
	for (unsigned long a = end; a < (1ul << 47); a += 1ul << 36)
		GUESS(a);
	static const unsigned long typical[] = {
		0x555555554000ul, 0x7ffff7dd0000ul, 0x7ffffffde000ul, 0x7f0000000000ul,
		0xffff888000000000ul, 0xffffffff81000000ul, 0xffffffffff600000ul,
	};
	for (size_t i = 0; i < sizeof(typical) / sizeof(typical[0]); i++)
		GUESS(typical[i]);
	/* The supervisor area below the I/O area, page by page (0 is NULL: "no action"). */
	for (unsigned long a = PAGE; a < 0x20000; a += PAGE)
		GUESS(a);
	/* The page tables above the stack (2 MiB from where memory ends), every 64 KiB. */
	for (unsigned long a = end; a < end + 0x200000; a += 0x10000)
		GUESS(a);
#undef GUESS
	respondf(200, "guess_sys: memory ends at %#lx; %lu of %lu guesses accepted (first %#lx)",
		end, accepted, tried, first);
}

/* ------------------------------------------------------------------------------------- */
/* Register state left behind                                                             */
/* ------------------------------------------------------------------------------------- */

static void mode_fsgs(void)
{
	const unsigned long fs = param_u("fs", 16, 0x300000), gs = param_u("gs", 16, 0x300000);
	/* Only the answer must be sent before TLS is broken: prepare it first. */
	static char out[128];
	const int n = snprintf(out, sizeof(out), "fsgs fs=%lx gs=%lx", fs, gs);
	__asm__ volatile("wrfsbase %0\n\twrgsbase %1" : : "r"(fs), "r"(gs) : "memory");
	backend_response(200, "text/plain", 10, out, (size_t)n);
}

static void mode_bases(void)
{
	unsigned long fs, gs;
	__asm__ volatile("rdfsbase %0\n\trdgsbase %1" : "=r"(fs), "=r"(gs));
	respondf(200, "bases fs=%lx gs=%lx", fs, gs);
}

static void mode_fpu_dirty(void)
{
	const unsigned int mxcsr = 0x7f80 | 0x40; /* round toward zero... DAZ, all masked */
	const unsigned short fcw = 0x0c7f;        /* x87: round toward zero */
	__asm__ volatile("ldmxcsr %0\n\tfldcw %1" : : "m"(mxcsr), "m"(fcw));
	respond(200, "fpu dirtied");
}

/* ------------------------------------------------------------------------------------- */

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	strncpy(url_copy, url, sizeof(url_copy) - 1);
	char mode[64];
	action_of(url, mode, sizeof(mode));
	char name[64];

#define M(s) (strcmp(mode, s) == 0)
	if (M("probe")) mode_probe();
	else if (M("ok")) respond(200, "ok");
	else if (M("loop")) for (;;) __asm__ volatile("");
	else if (M("malloc_bomb")) mode_malloc_bomb();
	else if (M("mmap_bomb")) mode_mmap_bomb();
	else if (M("brk_bomb")) mode_brk_bomb();
	else if (M("touch_all")) mode_touch_all();
	else if (M("stack_overflow")) mode_stack_overflow();
	else if (M("stack_clash")) mode_stack_clash();
	else if (M("fork_bomb")) mode_bomb("fork");
	else if (M("vfork_bomb")) mode_bomb("vfork");
	else if (M("clone_bomb")) mode_bomb("clone");
	else if (M("thread_bomb")) mode_bomb("thread");
	else if (M("fork_forever")) mode_fork_forever();
	else if (M("jump_garbage")) mode_jump_garbage();
	else if (M("jump_zero")) jump_to(0);
	else if (M("jump_unmapped")) jump_to(0x7f0000000000ul);
	else if (M("jump_noncanonical")) jump_to(0x8000000000000000ul);
	else if (M("jump_kernel")) jump_to(0xffffffff81000000ul);
	else if (M("jump_supervisor")) jump_to(0x4000);
	else if (M("jump_syscall_stub")) mode_jump_syscall_stub();
	else if (M("jump_trampoline")) jump_to(0x5080);
	else if (M("jump_entry_stub")) mode_jump_entry_stub();
	else if (M("write_code")) mode_write_code();
	else if (M("write_rodata")) mode_write_rodata();
	else if (M("write_stubs")) mode_write_at(0x5000);
	else if (M("write_fxsave")) mode_write_at(0x6000);
	else if (M("write_gdt")) mode_write_at(0x1000);
	else if (M("write_pagetables")) mode_write_at(0x10000);
	else if (M("write_io")) mode_write_io();
	else if (M("priv")) { param_s("insn", name, sizeof(name)); insn(name); }
	else if (M("api")) mode_api();
	else if (M("sys")) mode_sys();
	else if (M("big_response")) mode_big_response();
	else if (M("many_headers")) mode_many_headers();
	else if (M("extra_headers")) mode_extra_headers();
	else if (M("bad_headers")) mode_bad_headers();
	else if (M("status")) {
		const long s = (long)param_u("n", 10, 200);
		respondf((int)s, "status %ld", s);
	}
	else if (M("huge_ctype")) mode_huge_ctype();
	else if (M("wait")) { wait_for_requests(); respond(200, "FAIL wait returned"); }
	else if (M("wait_paused")) {
		struct kvm_request req;
		wait_for_requests_paused(&req);
		respond(200, "FAIL wait_paused returned");
	}
	else if (M("register")) {
		register_func(1, other_handler);
		respondf(200, "register done");
	}
	else if (M("make_ephemeral")) respondf(200, "r=%d", sys_make_ephemeral(0));
	else if (M("storage_allow")) respondf(200, "r=%ld", STORAGE_ALLOW(other_handler));
	else if (M("storage_return")) { storage_return("x", 1); respond(200, "storage_return returned"); }
	else if (M("storage_noreturn")) {
		/* Declared noreturn; in a request it returns -1: answer from a separate function so
		   the compiler's assumption does not matter. */
		void (*volatile f)(const void *, size_t) = storage_noreturn;
		f("x", 1);
		respond(200, "storage_noreturn returned");
	}
	else if (M("storage_call")) {
		long v = 0;
		respondf(200, "r=%ld", storage_call(sto_count, NULL, 0, &v, sizeof(v)));
	}
	else if (M("sto")) mode_sto();
	else if (M("guess_read")) mode_guess_read();
	else if (M("guess_sys")) mode_guess_sys();
	else if (M("fsgs")) mode_fsgs();
	else if (M("fpu_dirty")) mode_fpu_dirty();
	else if (M("bases")) mode_bases();
	else respondf(400, "unknown mode [%s]", mode);
#undef M
}

int main(void)
{
	for (size_t i = 0; i < sizeof(globals); i++)
		globals[i] = (unsigned char)(i * 31 + 7);
	memset(garbage_xsave, 0xff, sizeof(garbage_xsave));
	heap_obj = malloc(sizeof(*heap_obj));
	*heap_obj = 4242;
	if (IS_STORAGE()) {
		STORAGE_ALLOW(sto_count);
		STORAGE_ALLOW(sto_wait);
		STORAGE_ALLOW(sto_respond);
		STORAGE_ALLOW(sto_recurse);
		STORAGE_ALLOW(sto_register);
		STORAGE_ALLOW(sto_loop);
		STORAGE_ALLOW(sto_crash);
		STORAGE_ALLOW(sto_noreturn);
		STORAGE_ALLOW(sto_in);
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
