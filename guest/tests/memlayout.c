/* memlayout.c: the memory layout keys (blackout_area, relocate_fixed_mmap, stdout, the
   huge-page keys), tested by crates/edgevm/tests/all/memlayout.rs.

   Prints "memlayout: main stdout" (fd 1) and "memlayout: main stderr" (fd 2) at boot.
   GET /?m=MODE&a=HEXADDR, where MODE is one of:
     print      prints "memlayout: request stdout" / "... stderr": "ok"
     blackout   the range [a, a+2 MiB) is blacked out: "fixed=E write=E read=E overlap=N":
                the errno of mmap(a, MAP_FIXED), of write(1, a, 8) and of read(fd, a, 8) (0 =
                it worked), then how many of 64 fresh 4 MiB mmaps overlap the range
     touch      reads the byte at a (must crash)
     fixed      mmap(a, 8192, MAP_FIXED): "relocated" (memory elsewhere, written and read
                back), "kept" (at a) or "failed=E"
     hint       mmap(p - 64 MiB, 4096) without MAP_FIXED, p from a fresh mmap: "kept" when
                the hint was honoured, else "moved"
     touch_big  writes 16 MiB of fresh memory: "ok"
     remap      a is a remapped area of s MiB (`&s=`): "first=F last=L sys=E straddle=E
                below=E above=E huge=E go=G": its first and last bytes written and read
                back, a pipe round trip through it (errno, 0 = worked), then the errnos of
                a read() into the last 4 bytes + 4 beyond, a write() from the byte below it
                and from the byte after it, a write() of 2^64-16 bytes from 16 bytes before its end, and
                whether Go's reservation pattern (mmap PROT_NONE hint, then MAP_FIXED
                read-write) got the area's own address ("kept") or another ("moved")
     remap_inc  the u64 at a (main() stored 0x1234 there when REMAP=a is set; with SPLIT=1
                main() also makes one page of a fresh mapping read-only afterwards), then
                increments it: "v=N"
     remap_exec writes `mov $42,%eax; ret` at a and calls it: "exec=42" */
#include "kvm_api.h"
#include "test_util.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MB (1UL << 20)

static uint64_t param_hex(const char *url, const char *key)
{
	const char *v = query_param(url, key);
	return v ? strtoull(v, NULL, 16) : 0;
}

static int err_of(long r)
{
	return r < 0 ? errno : 0;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char out[256];
	const char *m = query_param(url, "m");
	const uint64_t a = param_hex(url, "a");
	if (m == NULL) {
		respond(400, "no mode");
		return;
	}
	if (strncmp(m, "print", 5) == 0) {
		printf("memlayout: request stdout\n");
		fflush(stdout);
		fprintf(stderr, "memlayout: request stderr\n");
		respond(200, "ok");
	} else if (strncmp(m, "blackout", 8) == 0) {
		void *p = mmap((void *)a, 4096, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		const int fixed = p == MAP_FAILED ? errno : 0;
		const int werr = err_of(write(1, (void *)a, 8));
		int fds[2];
		int rerr = -1;
		if (pipe(fds) == 0) {
			(void)write(fds[1], "12345678", 8);
			rerr = err_of(read(fds[0], (void *)(a + 4096), 8));
		}
		int overlap = 0;
		for (int i = 0; i < 64; i++) {
			char *q = mmap(NULL, 4 * MB, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (q == MAP_FAILED)
				break;
			if ((uint64_t)q < a + 2 * MB && (uint64_t)q + 4 * MB > a)
				overlap++;
			q[0] = 1;
		}
		snprintf(out, sizeof out, "fixed=%d write=%d read=%d overlap=%d", fixed, werr,
			 rerr, overlap);
		respond(200, out);
	} else if (strncmp(m, "touch_big", 9) == 0) {
		char *q = mmap(NULL, 16 * MB, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (q == MAP_FAILED) {
			respond(500, "mmap failed");
			return;
		}
		for (size_t i = 0; i < 16 * MB; i += 4096)
			q[i] = (char)i;
		respond(200, "ok");
	} else if (strncmp(m, "touch", 5) == 0) {
		volatile char *q = (volatile char *)a;
		snprintf(out, sizeof out, "read %d", q[0]);
		respond(200, out);
	} else if (strncmp(m, "fixed", 5) == 0) {
		char *p = mmap((void *)a, 8192, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (p == MAP_FAILED) {
			snprintf(out, sizeof out, "failed=%d", errno);
		} else {
			p[0] = 'x';
			p[8191] = 'y';
			snprintf(out, sizeof out, "%s",
				 (uint64_t)p == a ? "kept" :
				 (p[0] == 'x' && p[8191] == 'y') ? "relocated" : "broken");
		}
		respond(200, out);
	} else if (strncmp(m, "hint", 4) == 0) {
		char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *want = p - 64 * MB;
		char *q = mmap(want, 4096, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (q == MAP_FAILED) {
			respond(500, "mmap failed");
			return;
		}
		q[0] = 1;
		respond(200, q == want ? "kept" : "moved");
	} else if (strncmp(m, "remap_inc", 9) == 0) {
		volatile uint64_t *v = (volatile uint64_t *)a;
		snprintf(out, sizeof out, "v=%llu", (unsigned long long)*v);
		*v += 1;
		respond(200, out);
	} else if (strncmp(m, "remap_exec", 10) == 0) {
		static const unsigned char code42[] = { 0xB8, 42, 0, 0, 0, 0xC3 };
		memcpy((void *)a, code42, sizeof code42);
		__asm__ volatile("" : : "r"(a) : "memory");
		int (*f)(void);
		void *p = (void *)a;
		memcpy(&f, &p, sizeof f);
		snprintf(out, sizeof out, "exec=%d", f());
		respond(200, out);
	} else if (strncmp(m, "remap", 5) == 0) {
		const uint64_t size = param_hex(url, "s") << 20;
		volatile char *p = (volatile char *)a;
		p[0] = 'f';
		p[size - 1] = 'l';
		const char first = p[0], last = p[size - 1];
		int fds[2];
		int sys = -1;
		if (pipe(fds) == 0) {
			memcpy((char *)a + 16, "through!", 8);
			sys = err_of(write(fds[1], (char *)a + 16, 8));
			if (sys == 0)
				sys = err_of(read(fds[0], (char *)a + 4096, 8));
			if (sys == 0 && memcmp((char *)a + 4096, "through!", 8) != 0)
				sys = -2;
			(void)write(fds[1], "12345678", 8);
		}
		const int straddle = err_of(read(fds[0], (char *)a + size - 4, 8));
		const int below = err_of(write(fds[1], (char *)a - 1, 2));
		const int above = err_of(write(fds[1], (char *)a + size, 1));
		volatile size_t hugelen = (size_t)-16;
		const int huge = err_of(write(fds[1], (char *)a + size - 16, hugelen));
		void *r = mmap((void *)a, 2 * MB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		const char *go = "moved";
		if (r == (void *)a &&
		    mmap((void *)a, 2 * MB, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == (void *)a) {
			go = p[0] == 0 ? "kept" : "kept-unzeroed";
			p[0] = 'g';
		}
		snprintf(out, sizeof out,
			 "first=%c last=%c sys=%d straddle=%d below=%d above=%d huge=%d go=%s",
			 first, last, sys, straddle, below, above, huge, go);
		respond(200, out);
	} else {
		respond(400, "unknown mode");
	}
}

int main(void)
{
	printf("memlayout: main stdout\n");
	fflush(stdout);
	fprintf(stderr, "memlayout: main stderr\n");
	const char *remap = getenv("REMAP");
	if (remap != NULL)
		*(volatile uint64_t *)strtoull(remap, NULL, 16) = 0x1234;
	if (getenv("SPLIT") != NULL) {
		/* A protection change after the remappings' tables exist (snapshot test). */
		unsigned char *s = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (s != MAP_FAILED) {
			s[0] = 1;
			mprotect(s + 4096, 4096, PROT_READ);
		}
	}
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
