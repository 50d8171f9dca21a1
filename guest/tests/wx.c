/* wx.c: page protections (W^X, mprotect, executable_heap), tested by
   crates/edgevm/tests/all/wx.rs.

   At boot: a JIT the usual way (mmap RW, write code, mprotect RX, call: must give 42), and
   `frozen_code`, a RW page holding code (never made executable).

   GET /?m=MODE, where MODE is one of:
     exec_heap, exec_stack, exec_data   call code written to malloc/stack/.data memory
     write_code, write_rodata           write to a function / a string literal
     jit                                mmap RW, write, mprotect RX, call: "jit=42"
     jit_write                          the same, then write to the RX page
     rwx                                "mmap=E mprotect=E": errno (0 = allowed, then the
                                        code in it is called and must give 42)
     protect_data                       mprotect(data_page, PROT_READ): "ok"
     write_data                         data_page[0]++: "ok N"
     exec_frozen                        mprotect(frozen_code, RX) and call it: "frozen=42"
     call_frozen                        call frozen_code as it is (NX)
     none                               mprotect(data_page, PROT_NONE), then read it
     use_after_munmap                   mmap a page, munmap it, read it
     map_again                          mmap, munmap, mmap again: "same=1 zero=1 wrote=9"
     hostile                            mprotect with bad arguments: their errnos
     syscall_code                       system calls writing into code / rodata / a
                                        PROT_READ page: their errnos, then helper()
     syscall_prot                       system calls reading from / writing into PROT_NONE,
                                        munmapped, read-only pages and code, and buffers
                                        straddling into them: their errnos
     respond_none                       backend_response() with a body in a PROT_NONE page
     where                              "code=A data=B heap=C": where helper(), data_page
                                        and a fresh 3 MiB brk allocation (written) are */
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define PAGE 4096

typedef int (*fn_t)(void);
static const unsigned char code42[] = { 0xB8, 42, 0, 0, 0, 0xC3 }; /* mov $42,%eax; ret */

static unsigned char data_page[PAGE] __attribute__((aligned(PAGE)));
static unsigned char *frozen_code;
static int boot_jit;

__attribute__((noinline, used)) int helper(void);
__attribute__((noinline, used)) int helper(void)
{
	return 7;
}

static int call(void *p)
{
	/* The code written at p is used: without this, GCC drops a memcpy into malloc'd memory
	   that is only ever called (a dead store as far as it knows). */
	__asm__ volatile("" : : "r"(p) : "memory");
	fn_t f;
	memcpy(&f, &p, sizeof(f));
	return f();
}

static int jit(int write_after)
{
	unsigned char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	memcpy(p, code42, sizeof(code42));
	if (mprotect(p, PAGE, PROT_READ | PROT_EXEC) != 0)
		return -2;
	const int r = call(p);
	if (write_after)
		((volatile unsigned char *)p)[0] = 0xC3;
	return r;
}

static long sys_mprotect(unsigned long a, unsigned long l, unsigned long p)
{
	const long r = syscall(SYS_mprotect, a, l, p);
	return r < 0 ? errno : r;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char m[32] = "", out[256];
	const char *q = query_param(url, "m");
	for (size_t i = 0; q != NULL && q[i] != '\0' && q[i] != '&' && i + 1 < sizeof(m); i++)
		m[i] = q[i], m[i + 1] = '\0';
	if (strcmp(m, "exec_heap") == 0) {
		unsigned char *p = malloc(64);
		memcpy(p, code42, sizeof(code42));
		snprintf(out, sizeof(out), "ran %d", call(p));
	} else if (strcmp(m, "exec_stack") == 0) {
		unsigned char buf[64];
		memcpy(buf, code42, sizeof(code42));
		snprintf(out, sizeof(out), "ran %d", call(buf));
	} else if (strcmp(m, "exec_data") == 0) {
		memcpy(data_page, code42, sizeof(code42));
		snprintf(out, sizeof(out), "ran %d", call(data_page));
	} else if (strcmp(m, "write_code") == 0) {
		unsigned char *h;
		fn_t f = helper;
		memcpy(&h, &f, sizeof(h));
		*(volatile unsigned char *)h = 0xC3;
		snprintf(out, sizeof(out), "wrote code");
	} else if (strcmp(m, "write_rodata") == 0) {
		static const char lit[] = "a string literal in .rodata";
		*(volatile char *)lit = 'X';
		snprintf(out, sizeof(out), "wrote rodata");
	} else if (strcmp(m, "jit") == 0 || strcmp(m, "jit_write") == 0) {
		snprintf(out, sizeof(out), "jit=%d", jit(m[3] == '_'));
	} else if (strcmp(m, "rwx") == 0) {
		void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		const int e1 = p == MAP_FAILED ? errno : 0;
		unsigned char *q2 = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		const int e2 = mprotect(q2, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC) != 0 ? errno : 0;
		int r1 = 0, r2 = 0;
		if (e1 == 0) {
			memcpy(p, code42, sizeof(code42));
			r1 = call(p);
		}
		if (e2 == 0) {
			memcpy(q2, code42, sizeof(code42));
			r2 = call(q2);
		}
		snprintf(out, sizeof(out), "mmap=%d mprotect=%d ran=%d,%d", e1, e2, r1, r2);
	} else if (strcmp(m, "protect_data") == 0) {
		snprintf(out, sizeof(out), "ok %ld", sys_mprotect((unsigned long)data_page, PAGE, PROT_READ));
	} else if (strcmp(m, "write_data") == 0) {
		((volatile unsigned char *)data_page)[0]++;
		snprintf(out, sizeof(out), "ok %d", data_page[0]);
	} else if (strcmp(m, "exec_frozen") == 0) {
		const long e = sys_mprotect((unsigned long)frozen_code, PAGE, PROT_READ | PROT_EXEC);
		snprintf(out, sizeof(out), "frozen=%d (%ld)", e == 0 ? call(frozen_code) : -1, e);
	} else if (strcmp(m, "call_frozen") == 0) {
		snprintf(out, sizeof(out), "ran %d", call(frozen_code));
	} else if (strcmp(m, "use_after_munmap") == 0) {
		volatile unsigned char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		p[0] = 7;
		munmap((void *)p, PAGE);
		snprintf(out, sizeof(out), "read %d after munmap", p[0]);
	} else if (strcmp(m, "map_again") == 0) {
		unsigned char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		p[0] = 7;
		munmap(p, PAGE);
		unsigned char *q = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		const int first = q[0];
		q[0] = 9;
		snprintf(out, sizeof(out), "same=%d zero=%d wrote=%d", p == q, first == 0, q[0]);
	} else if (strcmp(m, "none") == 0) {
		const long e = sys_mprotect((unsigned long)data_page, PAGE, PROT_NONE);
		snprintf(out, sizeof(out), "read %d after %ld", ((volatile unsigned char *)data_page)[1], e);
	} else if (strcmp(m, "hostile") == 0) {
		const unsigned long d = (unsigned long)data_page;
		snprintf(out, sizeof(out),
			 "unaligned=%ld badprot=%ld null=%ld kernel=%ld io=%ld wrap=%ld huge=%ld zero=%ld growsdown=%ld",
			 sys_mprotect(d + 1, PAGE, PROT_READ), sys_mprotect(d, PAGE, 8),
			 sys_mprotect(0, PAGE, PROT_READ), sys_mprotect(0x10000, PAGE, PROT_READ | PROT_WRITE),
			 sys_mprotect(0x20000, PAGE, PROT_READ), sys_mprotect(d, ~0UL - d, PROT_READ),
			 sys_mprotect(d, 1UL << 46, PROT_READ), sys_mprotect(d, 0, PROT_READ),
			 sys_mprotect(d, PAGE, PROT_READ | 0x01000000));
	} else if (strcmp(m, "syscall_code") == 0) {
		unsigned char *h;
		fn_t f = helper;
		memcpy(&h, &f, sizeof(h));
		static const char lit[64] = "rodata";
		unsigned char *ro = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		const long g1 = getrandom(h, 16, 0) < 0 ? errno : 0;
		/* The system call itself: the C library's clock_gettime is the vDSO, which writes
		   from user mode and faults, as on Linux. */
		const long g2 = syscall(SYS_clock_gettime, CLOCK_REALTIME, (struct timespec *)(void *)lit) < 0 ? errno : 0;
		const long g3 = getrandom(ro, 16, 0) < 0 ? errno : 0;
		const long g4 = getrandom(data_page, 16, 0) < 0 ? errno : 0;
		snprintf(out, sizeof(out), "code=%ld rodata=%ld ro=%ld data=%ld helper=%d", g1, g2, g3, g4,
			 helper());
	} else if (strcmp(m, "syscall_prot") == 0) {
		/* [RW][NONE][RW][RO] and a munmapped page. */
		unsigned char *p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		unsigned char *gone = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(p, 'a', 4 * PAGE);
		gone[0] = 'g';
		munmap(gone, PAGE);
		mprotect(p + PAGE, PAGE, PROT_NONE);
		mprotect(p + 3 * PAGE, PAGE, PROT_READ);
		unsigned char *h;
		fn_t f = helper;
		memcpy(&h, &f, sizeof(h));
		int fds[2];
		if (pipe(fds) != 0) {
			backend_response_str(500, "text/plain", "pipe");
			return;
		}
#define E(call) ((call) < 0 ? errno : 0)
		/* Host reads of the program's buffers. */
		const int w_none = E(write(fds[1], p + PAGE, 16));
		const int w_straddle = E(write(fds[1], p + PAGE - 8, 16));
		const int w_gone = E(write(fds[1], gone, 16));
		struct iovec iov[2] = { { p, 8 }, { p + PAGE + 8, 8 } };
		/* The first buffer is written, the second faults: a short count, as Linux. */
		const long w_iov = writev(fds[1], iov, 2);
		const int w_iovarr = E(writev(fds[1], (struct iovec *)(void *)(p + PAGE), 1));
		const struct timespec *ts_none = (const struct timespec *)(void *)(p + PAGE);
		const int sleep_none = E(nanosleep(ts_none, NULL));
		const long w_ok = write(fds[1], p, 16);
		/* Host writes into them (16 bytes wait in the pipe). */
		const int r_ro = E(read(fds[0], p + 3 * PAGE, 16));
		const int r_code = E(read(fds[0], h, 16));
		const int r_none = E(read(fds[0], p + PAGE, 16));
		const int r_straddle = E(read(fds[0], p + 3 * PAGE - 8, 16));
		const long r_ok = read(fds[0], p + 2 * PAGE, 16);
#undef E
		close(fds[0]);
		close(fds[1]);
		snprintf(out, sizeof(out),
			 "write: none=%d straddle=%d gone=%d iov=%ld iovarr=%d sleep=%d ok=%ld; "
			 "read: ro=%d code=%d none=%d straddle=%d ok=%ld",
			 w_none, w_straddle, w_gone, w_iov, w_iovarr, sleep_none, w_ok, r_ro, r_code,
			 r_none, r_straddle, r_ok);
	} else if (strcmp(m, "respond_none") == 0) {
		unsigned char *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(p, 'x', PAGE);
		mprotect(p, PAGE, PROT_NONE);
		backend_response(200, "text/plain", 10, p, 16);
		snprintf(out, sizeof(out), "FAIL responded");
	} else if (strcmp(m, "where") == 0) {
		unsigned char *h;
		fn_t f = helper;
		memcpy(&h, &f, sizeof(h));
		unsigned char *heap = sbrk(3 << 20);
		if (heap != (void *)-1)
			memset(heap, 0x5A, 3 << 20);
		snprintf(out, sizeof(out), "code=%#lx data=%#lx heap=%#lx", (unsigned long)h,
			 (unsigned long)data_page, (unsigned long)heap);
	} else {
		backend_response_str(400, "text/plain", "unknown mode");
	}
	backend_response_str(200, "text/plain", out);
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	boot_jit = jit(0);
	frozen_code = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memcpy(frozen_code, code42, sizeof(code42));
	if (boot_jit != 42) {
		printf("boot jit=%d\n", boot_jit);
		return 3;
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
