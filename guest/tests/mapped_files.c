/* mapped_files.c: file mappings with `mmap_backed_files` (tests/all/mapped_files.rs).

   main(): maps /data/big.bin read-only (MAP_PRIVATE, the whole file), /data/small.txt
   (MAP_SHARED, read-only) and small.txt again, patched ("MAIN" over its first bytes after an
   mprotect to writable, then read-only again), then waits for requests. Actions:
     frozen    "sum=<sum of big's bytes> small=<8 bytes of small> patched=<8 bytes of the patched
               mapping>": the frozen mappings
     map       map &p= read-only (&len= bytes, default the file's size; &off=) in the request:
               "head=<first 8 bytes> last=<value of the last mapped byte>"
     write     write to the frozen mapping (SIGSEGV caught), read() into it, and a writable
               private mapping of small written: "segv=<0|1> read=<errno name> priv=<bytes>"
     mprotect  mprotect the frozen mapping's first page writable and write "XY" there:
               "r=<result> now=<first 2 bytes>"
     dontneed  a page of the frozen big mapping made writable, written, MADV_DONTNEED'd:
               "r=0 written=1 madvise=0 now=<the file's byte>"
     unmap     munmap the frozen small mapping, map anonymous memory of its size (the same
               range): "zero=<0|1>"
     many      map &p= (its first page) &n= times read-only: "ok=<n> failed=<n> same=<0|1>"
     exec      map &p= PROT_READ|PROT_EXEC and call it as a function returning int: "<value>"
*/
#define _GNU_SOURCE
#include "test_util.h"
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>

static unsigned char *big;
static size_t big_len;
static char *small;
static char *patched;
static size_t small_len;
static char out[512];
static sigjmp_buf jump;

static unsigned long sum(const unsigned char *p, size_t n)
{
	unsigned long s = 0;
	for (size_t i = 0; i < n; i++)
		s += p[i];
	return s;
}

static void *map_ro(const char *p, size_t len, off_t off, int flags, size_t *size)
{
	int fd = open(p, O_RDONLY);
	if (fd < 0)
		return MAP_FAILED;
	struct stat st;
	fstat(fd, &st);
	if (size)
		*size = st.st_size;
	if (len == 0)
		len = st.st_size;
	void *m = mmap(NULL, len, PROT_READ, flags, fd, off);
	close(fd);
	return m;
}

static void on_segv(int sig)
{
	(void)sig;
	siglongjmp(jump, 1);
}

static const char *param(const char *url, const char *key, char *buf, size_t bl)
{
	const char *v = query_param(url, key);
	size_t n = 0;
	while (v && v[n] && v[n] != '&' && n + 1 < bl) {
		buf[n] = v[n];
		n++;
	}
	buf[n] = 0;
	return v ? buf : NULL;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char action[32], p[256], num[32];
	action_of(url, action, sizeof(action));
	param(url, "p", p, sizeof(p));
	if (strcmp(action, "frozen") == 0) {
		snprintf(out, sizeof(out), "sum=%lu small=%.8s patched=%.8s", sum(big, big_len), small,
			 patched);
	} else if (strcmp(action, "map") == 0) {
		size_t len = param(url, "len", num, sizeof(num)) ? strtoul(num, NULL, 0) : 0;
		off_t off = param(url, "off", num, sizeof(num)) ? strtoul(num, NULL, 0) : 0;
		size_t size = 0;
		unsigned char *m = map_ro(p, len, off, MAP_PRIVATE, &size);
		if (len == 0)
			len = size;
		if (m == MAP_FAILED)
			snprintf(out, sizeof(out), "error=%d", errno);
		else
			snprintf(out, sizeof(out), "head=%.8s last=%d", m, m[len - 1]);
	} else if (strcmp(action, "write") == 0) {
		struct sigaction sa = {0};
		sa.sa_handler = on_segv;
		sigaction(SIGSEGV, &sa, NULL);
		volatile int segv = 0;
		if (sigsetjmp(jump, 1) == 0)
			*(volatile char *)small = 'W';
		else
			segv = 1;
		int fd = open("/data/small.txt", O_RDONLY);
		ssize_t r = read(fd, small, 4);
		int e = errno;
		close(fd);
		fd = open("/data/small.txt", O_RDONLY);
		char *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		close(fd);
		if (w != MAP_FAILED)
			memcpy(w, "PRIV", 4);
		snprintf(out, sizeof(out), "segv=%d read=%s priv=%.8s", segv,
			 r < 0 && e == EFAULT ? "EFAULT" : "?", w == MAP_FAILED ? "failed" : w);
	} else if (strcmp(action, "mprotect") == 0) {
		int r = mprotect(big, 4096, PROT_READ | PROT_WRITE);
		if (r == 0)
			memcpy(big, "XY", 2);
		snprintf(out, sizeof(out), "r=%d now=%.2s", r, big);
	} else if (strcmp(action, "dontneed") == 0) {
		/* A page of the frozen mapping made writable, written, then MADV_DONTNEED: the
		   file's byte again (4101 % 251 = 85), not zero. */
		int r = mprotect(big + 4096, 4096, PROT_READ | PROT_WRITE);
		big[4101] = 1;
		int w = big[4101];
		int m = madvise(big + 4096, 4096, MADV_DONTNEED);
		snprintf(out, sizeof(out), "r=%d written=%d madvise=%d now=%d", r, w, m, big[4101]);
	} else if (strcmp(action, "unmap") == 0) {
		size_t len = (small_len + 4095) & ~4095ul;
		munmap(small, len);
		unsigned char *a = mmap(small, len, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		int zero = a != MAP_FAILED;
		for (size_t i = 0; zero && i < len; i++)
			zero = a[i] == 0;
		snprintf(out, sizeof(out), "zero=%d", zero);
	} else if (strcmp(action, "many") == 0) {
		long n = param(url, "n", num, sizeof(num)) ? atol(num) : 1;
		long ok = 0, failed = 0;
		int same = 1;
		char *first = NULL;
		for (long i = 0; i < n; i++) {
			char *m = map_ro(p, 4096, 0, MAP_PRIVATE, NULL);
			if (m == MAP_FAILED) {
				failed++;
				continue;
			}
			ok++;
			if (!first)
				first = m;
			else if (memcmp(first, m, 16) != 0)
				same = 0;
		}
		snprintf(out, sizeof(out), "ok=%ld failed=%ld same=%d", ok, failed, same);
	} else if (strcmp(action, "exec") == 0) {
		int fd = open(p, O_RDONLY);
		void *m = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
		close(fd);
		if (m == MAP_FAILED)
			snprintf(out, sizeof(out), "error=%d", errno);
		else
			snprintf(out, sizeof(out), "%d", ((int (*)(void))m)());
	} else {
		snprintf(out, sizeof(out), "unknown action");
	}
	respond(200, out);
}

int main(void)
{
	big = map_ro("/data/big.bin", 0, 0, MAP_PRIVATE, &big_len);
	small = map_ro("/data/small.txt", 0, 0, MAP_SHARED, &small_len);
	/* Patched as ld.so patches text relocations: writable, written, read-only again. */
	patched = map_ro("/data/small.txt", 0, 0, MAP_PRIVATE, NULL);
	if (big == MAP_FAILED || small == MAP_FAILED || patched == MAP_FAILED) {
		fprintf(stderr, "cannot map the data files: %d\n", errno);
		return 1;
	}
	if (mprotect(patched, 4096, PROT_READ | PROT_WRITE) != 0)
		return 2;
	memcpy(patched, "MAIN", 4);
	mprotect(patched, 4096, PROT_READ);
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
