/* api_fuzz.c: a hostile program. Each request (GET /x/?seed=N) makes 200 random kvm_api
   hypercalls and Linux system calls with random and nasty arguments (NULL, kernel-area and
   non-canonical pointers, huge lengths, pointers into its own stack and heap), then answers
   "survived". The server must answer every request (200, or 500 when the program kills
   itself) and keep serving, and nothing a request does may reach the next request.
   Odd seeds stay away from calls that may legitimately crash the program; seeds that are
   2 mod 4 also remap memory and move the FS/GS bases. */
#include "kvm_api.h"
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/syscall.h>

static uint64_t rng;
static uint64_t next(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1Dull;
}

static char buffer[8192];

static uint64_t arg(void)
{
	static const uint64_t nasty[] = {
		0, 1, 8, 0xffffffffffffffffull, 0x1000, 0x2000, 0x10000, 0x20000, 0x23800,
		0x100000, 0x7fffffffffffull, 0x8000000000000000ull, 4096, 65535, 65536,
		1ull << 40, 0xdeadbeef000ull,
	};
	switch (next() % 5) {
	case 0: return nasty[next() % (sizeof(nasty) / sizeof(nasty[0]))];
	case 1: return (uint64_t)(uintptr_t)buffer + (next() % sizeof(buffer));
	case 2: return next() % 256;
	case 3: return next();
	default: return (uint64_t)(uintptr_t)&rng;
	}
}

static void fuzz(unsigned long long seed);

/* In the storage VM: the same random calls, then a normal return. */
static void storage_fuzz(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)res;
	unsigned long long seed = 1;
	if (n > 0 && buf[0].len == sizeof(seed))
		memcpy(&seed, buf[0].data, sizeof(seed));
	fuzz(seed);
	storage_return("ok", 2);
}

static long storage_count;
static void storage_counter(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n;
	(void)buf;
	(void)res;
	storage_count++;
	storage_return(&storage_count, sizeof(storage_count));
}

static void on_get(const char *url, const char *arg_)
{
	(void)arg_;
	const char *s = strstr(url, "seed=");
	const unsigned long long seed = s ? strtoull(s + 5, NULL, 10) : 0;
	if (strstr(url, "/storage")) {
		/* /x/storage?seed=N: fuzz inside the storage VM. */
		char out[64] = "";
		const long r = storage_call(storage_fuzz, &seed, sizeof(seed), out, sizeof(out) - 1);
		backend_response(200, "text/plain", 10, r == 2 ? "storage survived" : "storage call failed",
			r == 2 ? 16 : 19);
		return;
	}
	if (strstr(url, "/count")) {
		long count = 0;
		const long r = storage_call(storage_counter, NULL, 0, &count, sizeof(count));
		char out[64];
		const int n = snprintf(out, sizeof(out), "r=%ld count=%ld", r, count);
		backend_response(200, "text/plain", 10, out, (size_t)n);
		return;
	}
	fuzz(seed);
	backend_response_str(200, "text/plain", "survived");
}

static void fuzz(unsigned long long seed)
{
	rng = (seed ? seed : 1) * 2654435761ull + 1;
	static const uint32_t calls[] = {
		0x10000, 0x10005, 0x10020, 0x10021, 0x10022, 0x10023, 0x10030, 0x10031,
		0x10032, 0x10033, 0x10035, 0x10500, 0x10700, 0x10703, 0x10706, 0x10707,
		0x10708, 0x10709, 0x1070A, 0x10710, 0x10711, 0x10712, 0x10713, 0x10A00,
		0x20000, 0x20001, 0x7F000, 0x7F7F7, 0x7FDEB, 0x12345, 0xFFFE,
	};
	/* Odd seeds leave out the header calls (and regex_copyto, which names header sets),
	   whose misuse fails a request at once, so the
	   rest of the API and the system calls get exercised too. */
	const int skip_headers = seed % 2;
	const int memory_calls = seed % 4 == 2;
	for (int i = 0; i < 200; i++) {
		if (next() % 2) {
			const uint32_t num = calls[next() % (sizeof(calls) / sizeof(calls[0]))];
			if (skip_headers && ((num >= 0x10020 && num <= 0x10023) || num == 0x10035))
				continue;
			/* A storage task with a random function runs later, in storage, and may
			   wreck its state: the program harming itself, which the storage tests
			   (odd seeds) cannot tell from a bug. */
			if (skip_headers && num == 0x10709)
				continue;
			hypercall6(num, arg(), arg(), arg(), arg(), arg(), arg());
		} else {
			long nr = (long)(next() % 340);
			/* Skip the calls that end the program or wait forever on purpose, and clone
			   (a thread on a random stack). Waiting for descriptors with no timeout, and
			   making the descriptors a blocking read waits on forever (an empty pipe whose
			   write end the program holds, an eventfd at 0, a timer never armed), is
			   waiting forever on purpose too: a deadlock the host reports. */
			if (nr == SYS_clone || nr == SYS_exit || nr == SYS_exit_group || nr == SYS_kill || nr == SYS_tkill
				|| nr == SYS_tgkill || nr == SYS_futex || nr == SYS_nanosleep
				|| nr == SYS_clock_nanosleep || nr == SYS_rt_sigreturn || nr == SYS_poll
				|| nr == SYS_ppoll || nr == SYS_select || nr == SYS_pselect6
				|| nr == SYS_epoll_wait || nr == SYS_epoll_pwait || nr == SYS_pipe
				|| nr == SYS_pipe2 || nr == SYS_eventfd || nr == SYS_eventfd2
				|| nr == SYS_timerfd_create)
				continue;
			/* Memory calls may unmap the program under its own feet: only with seeds
			   that are allowed to fail (== 2 mod 4). */
			if ((nr == SYS_munmap || nr == SYS_mremap || nr == SYS_mmap || nr == SYS_brk
				|| nr == SYS_madvise || nr == SYS_arch_prctl) && !memory_calls)
				continue;
			/* Timers send signals whose default action ends the program, pause(),
			   rt_sigsuspend and rt_sigtimedwait wait for one: only with those seeds too. */
			if ((nr == SYS_alarm || nr == SYS_setitimer || nr == SYS_timer_create
				|| nr == SYS_timer_settime || nr == SYS_pause || nr == SYS_rt_sigsuspend
				|| nr == SYS_rt_sigtimedwait) && !memory_calls)
				continue;
			syscall(nr, arg(), arg(), arg(), arg(), arg(), arg());
		}
	}
}

int main(void)
{
	/* FUZZ_INIT=N (config "environment"): make the random calls during initialization. */
	const char *init = getenv("FUZZ_INIT");
	if (init != NULL)
		fuzz(strtoull(init, NULL, 10));
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
