/* syscalls.c: exercises the Linux system calls edgevm emulates and prints
   one line per check: "ok <name> ..." or "FAIL <name> ...". Exits 1 if any
   check failed. Checks that only make sense in the sandbox (e.g. that an
   unsupported system call gives ENOSYS) are enforced only when KVM_NAME is
   set, so the program also passes when run natively on Linux. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>

static int failures = 0;
static int passes = 0;
static int in_sandbox = 0;

#define OK(name, ...) do { printf("ok " name " " __VA_ARGS__); printf("\n"); passes++; } while (0)
#define FAIL(name, ...) do { printf("FAIL " name " " __VA_ARGS__); printf("\n"); failures++; } while (0)
#define CHECK(cond, name, ...) do { if (cond) OK(name, __VA_ARGS__); else FAIL(name, __VA_ARGS__); } while (0)

static const long PAGE = 4096;

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

static void check_brk(void)
{
	uintptr_t cur = (uintptr_t)syscall(SYS_brk, 0);
	if (cur == 0 || cur == (uintptr_t)-1) {
		FAIL("brk", "query returned %#lx", (unsigned long)cur);
		return;
	}
	uintptr_t want = cur + 16 * PAGE;
	uintptr_t got = (uintptr_t)syscall(SYS_brk, want);
	if (got != want) {
		FAIL("brk", "grow to %#lx returned %#lx", (unsigned long)want, (unsigned long)got);
		return;
	}
	volatile unsigned char *p = (volatile unsigned char *)cur;
	for (long i = 0; i < 16 * PAGE; i += PAGE / 2)
		p[i] = (unsigned char)(i / PAGE + 1);
	int good = 1;
	for (long i = 0; i < 16 * PAGE; i += PAGE / 2)
		if (p[i] != (unsigned char)(i / PAGE + 1))
			good = 0;
	/* Shrink back so malloc's view is unaffected. */
	syscall(SYS_brk, cur);
	CHECK(good, "brk", "start=%#lx grew 64KiB", (unsigned long)cur);
}

static void check_mmap(void)
{
	const size_t len = 16 * 1024 * 1024;
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		FAIL("mmap", "errno=%d", errno);
		return;
	}
	int zero = 1;
	for (size_t i = 0; i < len; i += PAGE)
		if (p[i] != 0 || p[i + PAGE - 1] != 0)
			zero = 0;
	for (size_t i = 0; i < len; i += PAGE) {
		p[i] = (unsigned char)(i / PAGE);
		p[i + PAGE - 1] = (unsigned char)~(i / PAGE);
	}
	/* A write straddling a page boundary. */
	memcpy(p + PAGE - 3, "abcdef", 6);
	int good = memcmp(p + PAGE - 3, "abcdef", 6) == 0;
	for (size_t i = 2 * PAGE; i < len; i += PAGE)
		if (p[i] != (unsigned char)(i / PAGE) ||
		    p[i + PAGE - 1] != (unsigned char)~(i / PAGE))
			good = 0;
	CHECK(zero && good, "mmap", "16MiB anon at %p zero=%d rw=%d", (void *)p, zero, good);

	int r = mprotect(p, PAGE, PROT_READ);
	int r2 = mprotect(p, PAGE, PROT_READ | PROT_WRITE);
	p[0] = 0x5A;
	CHECK(r == 0 && r2 == 0 && p[0] == 0x5A, "mprotect", "r=%d r2=%d", r, r2);

	int m = madvise(p + len - 4 * PAGE, 4 * PAGE, MADV_DONTNEED);
	CHECK(m == 0, "madvise", "r=%d errno=%d", m, m ? errno : 0);

	/* mremap: shrink the big mapping to 8 pages, then grow it (may move). */
	unsigned char *q = mremap(p, len, 8 * PAGE, 0);
	if (q == MAP_FAILED) {
		FAIL("mremap", "shrink errno=%d", errno);
		munmap(p, len);
		return;
	}
	unsigned char *g = mremap(q, 8 * PAGE, 64 * PAGE, MREMAP_MAYMOVE);
	if (g == MAP_FAILED) {
		FAIL("mremap", "grow errno=%d", errno);
		munmap(q, 8 * PAGE);
		return;
	}
	good = g[0] == 0x5A && g[3 * PAGE] == 3 && g[4 * PAGE - 1] == (unsigned char)~3u;
	g[63 * PAGE] = 7;
	good = good && g[63 * PAGE] == 7;
	CHECK(good, "mremap", "%p -> %p", (void *)q, (void *)g);

	r = munmap(g, 64 * PAGE);
	CHECK(r == 0, "munmap", "r=%d", r);
}

static void check_time(void)
{
	struct timespec rt, mono1, mono2;
	int r1 = clock_gettime(CLOCK_REALTIME, &rt);
	int r2 = clock_gettime(CLOCK_MONOTONIC, &mono1);
	int r3 = clock_gettime(CLOCK_MONOTONIC, &mono2);
	CHECK(r1 == 0 && rt.tv_sec > 1600000000, "clock_gettime_realtime",
		"r=%d sec=%lld", r1, (long long)rt.tv_sec);
	CHECK(r2 == 0 && r3 == 0 && ts_ns(&mono2) >= ts_ns(&mono1), "clock_gettime_monotonic",
		"sec=%lld", (long long)mono1.tv_sec);

	struct timeval tv;
	int r4 = gettimeofday(&tv, NULL);
	long long d = (long long)tv.tv_sec - (long long)rt.tv_sec;
	CHECK(r4 == 0 && d >= -2 && d <= 2, "gettimeofday", "sec=%lld", (long long)tv.tv_sec);

	time_t t = time(NULL);
	d = (long long)t - (long long)rt.tv_sec;
	CHECK(d >= -2 && d <= 2, "time", "t=%lld", (long long)t);

	struct timespec req = { 0, 10 * 1000 * 1000 }, before, after;
	clock_gettime(CLOCK_MONOTONIC, &before);
	int r5 = nanosleep(&req, NULL);
	clock_gettime(CLOCK_MONOTONIC, &after);
	int64_t elapsed = ts_ns(&after) - ts_ns(&before);
	CHECK(r5 == 0 && elapsed >= 10 * 1000 * 1000, "nanosleep",
		"elapsed=%lldus", (long long)(elapsed / 1000));
}

static void check_random(void)
{
	unsigned char buf[32];
	memset(buf, 0, sizeof(buf));
	long n = syscall(SYS_getrandom, buf, sizeof(buf), 0);
	int nonzero = 0;
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != 0)
			nonzero++;
	CHECK(n == (long)sizeof(buf) && nonzero > 8, "getrandom", "n=%ld nonzero=%d", n, nonzero);
}

static void check_ids(void)
{
	struct utsname u;
	int r = uname(&u);
	CHECK(r == 0 && u.sysname[0] != 0, "uname", "sysname=%s release=%s machine=%s",
		u.sysname, u.release, u.machine);

	long pid = syscall(SYS_getpid), ppid = syscall(SYS_getppid);
	long tid = syscall(SYS_gettid);
	CHECK(pid > 0, "getpid", "pid=%ld", pid);
	CHECK(ppid >= 0, "getppid", "ppid=%ld", ppid);
	CHECK(tid > 0, "gettid", "tid=%ld", tid);
	long uid = syscall(SYS_getuid), euid = syscall(SYS_geteuid);
	long gid = syscall(SYS_getgid), egid = syscall(SYS_getegid);
	CHECK(uid >= 0 && euid >= 0 && gid >= 0 && egid >= 0, "getuid",
		"uid=%ld euid=%ld gid=%ld egid=%ld", uid, euid, gid, egid);
}

static void check_files(void)
{
	char path[4096];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
	if (n > 0) {
		path[n] = 0;
		OK("readlink", "/proc/self/exe=%s", path);
	} else {
		FAIL("readlink", "/proc/self/exe r=%zd errno=%d", n, errno);
	}

	struct stat st;
	int r = fstat(1, &st);
	CHECK(r == 0, "fstat", "fd1 mode=%o", (unsigned)st.st_mode);

	struct termios tio;
	errno = 0;
	r = ioctl(1, TCGETS, &tio);
	int e = errno;
	/* edgevm's stdout is a terminal (so stdio line-buffers it); natively it
	   may be anything. */
	if (in_sandbox && r == 0 && S_ISCHR(st.st_mode) && isatty(1) && isatty(2) && !isatty(0))
		OK("ioctl_tcgets", "terminal");
	else if (!in_sandbox && (r == 0 || e == ENOTTY))
		OK("ioctl_tcgets", "native r=%d (tolerated)", r);
	else
		FAIL("ioctl_tcgets", "r=%d errno=%d", r, e);
}

static void check_limits(void)
{
	struct rlimit rl;
	int r = getrlimit(RLIMIT_STACK, &rl);
	CHECK(r == 0, "getrlimit", "stack cur=%llu", (unsigned long long)rl.rlim_cur);
	long r2 = syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &rl);
	CHECK(r2 == 0, "prlimit64", "nofile cur=%llu", (unsigned long long)rl.rlim_cur);

	unsigned char mask[128];
	memset(mask, 0, sizeof(mask));
	long n = syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask);
	int cpus = 0;
	for (long i = 0; i < n && i < (long)sizeof(mask); i++)
		cpus += __builtin_popcount(mask[i]);
	CHECK(n > 0 && cpus > 0, "sched_getaffinity", "bytes=%ld cpus=%d", n, cpus);
}

static volatile int got_signal = 0;
static void on_signal(int sig) { got_signal = sig; }

static void check_signals(void)
{
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	int r = sigaction(SIGUSR1, &sa, &old);
	CHECK(r == 0, "rt_sigaction", "r=%d", r);

	sigset_t set, oldset;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	int r1 = sigprocmask(SIG_BLOCK, &set, &oldset);
	int r2 = sigprocmask(SIG_SETMASK, &oldset, NULL);
	CHECK(r1 == 0 && r2 == 0, "rt_sigprocmask", "r=%d,%d", r1, r2);
}

static void check_enosys(void)
{
	/* An invalid system call number is ENOSYS everywhere. */
	errno = 0;
	long r = syscall(1000);
	int e = errno;
	CHECK(r == -1 && e == ENOSYS, "enosys_bad_nr", "r=%ld errno=%d", r, e);

	/* A system call edgevm does not offer (loading a new kernel): ENOSYS in the sandbox. */
	errno = 0;
	r = syscall(SYS_kexec_load, 0, 0, NULL, 0);
	e = errno;
	if (r == -1 && e == ENOSYS)
		OK("enosys", "kexec_load -> ENOSYS");
	else if (!in_sandbox)
		OK("enosys", "native: kexec_load r=%ld errno=%d (not enforced)", r, e);
	else
		FAIL("enosys", "kexec_load r=%ld errno=%d", r, e);

	/* Sockets are real (under the network policy): making one needs no permission. */
	errno = 0;
	r = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
	e = errno;
	CHECK(r >= 0, "socket", "socket(AF_INET) r=%ld errno=%d", r, e);
	if (r >= 0)
		close((int)r);
	if (in_sandbox) {
		errno = 0;
		r = syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0);
		e = errno;
		CHECK(r == -1 && e == EAFNOSUPPORT, "socket_packet", "r=%ld errno=%d", r, e);
	}
}

static void check_stdin(void)
{
	if (!in_sandbox && isatty(0)) {
		OK("read_stdin_eof", "native terminal (skipped)");
		return;
	}
	char buf[16];
	ssize_t n = read(0, buf, sizeof(buf));
	CHECK(n == 0, "read_stdin_eof", "n=%zd", n);
}

int main(void)
{
	in_sandbox = getenv("KVM_NAME") != NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	check_brk();
	check_mmap();
	check_time();
	check_random();
	check_ids();
	check_files();
	check_limits();
	check_signals();
	check_enosys();
	check_stdin();
	printf("syscalls: %d ok, %d failed\n", passes, failures);
	return failures ? 1 : 0;
}
