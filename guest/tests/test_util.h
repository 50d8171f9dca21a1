/* test_util.h: small helpers shared by the test guests (not part of the API). */
#ifndef EDGEVM_TEST_UTIL_H
#define EDGEVM_TEST_UTIL_H
#include "kvm_api.h"
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Answer `status` with `text` as text/plain. */
static inline void respond(int status, const char *text)
{
	backend_response((int16_t)status, "text/plain", 10, text, strlen(text));
}

/* The second path segment of url (/<program>/<action>?...) into out. */
static inline void action_of(const char *url, char *out, size_t outl)
{
	const char *p = url;
	if (*p == '/')
		p++;
	p = strchr(p, '/');
	size_t n = 0;
	if (p != NULL) {
		p++;
		while (p[n] != 0 && p[n] != '?' && p[n] != '/' && n + 1 < outl)
			n++;
		memcpy(out, p, n);
	}
	out[n] = 0;
}

/* The value of query parameter `key` (as text, up to '&' or the end), or NULL. */
static inline const char *query_param(const char *url, const char *key)
{
	const char *q = strchr(url, '?');
	const size_t kl = strlen(key);
	while (q != NULL) {
		q++;
		if (strncmp(q, key, kl) == 0 && q[kl] == '=')
			return q + kl + 1;
		q = strchr(q, '&');
	}
	return NULL;
}
/* Whether the host reads guest address `a`: rt_sigaction reads a 32-byte sigaction from
   it and answers 0 if the host could, -EFAULT if not. */
static inline int host_reads(unsigned long a)
{
	return syscall(SYS_rt_sigaction, SIGUSR2, a, NULL, 8) == 0;
}

/* Where the program's memory ends: the first page the host no longer accepts pointers to
   (binary search between 1 MiB and 1 TiB). That is the top of its stack, where edgevm's
   page tables begin (2 MiB, then the shared memory, if any: a program with shared memory
   may get the end of that instead). */
static inline unsigned long memory_end(void)
{
	unsigned long lo = 0x100000, hi = 1ul << 40;
	while (hi - lo > 4096) {
		const unsigned long mid = (lo + (hi - lo) / 2) & ~4095ul;
		if (host_reads(mid))
			lo = mid;
		else
			hi = mid;
	}
	return hi;
}

/* A raw hypercall `num` with six arguments, as a program not using kvm_api.h's stubs would
   make it (rcx is the 4th SysV argument; the API takes it from rcx, like the stubs). */
static inline long hypercall6(unsigned num, unsigned long a, unsigned long b, unsigned long c,
	unsigned long d, unsigned long e, unsigned long f)
{
	register unsigned long r10 __asm__("r10") = d;
	register unsigned long r8 __asm__("r8") = e;
	register unsigned long r9 __asm__("r9") = f;
	long ret;
	__asm__ volatile("mov %%r10, %%rcx\n\tout %%eax, $0"
		: "=a"(ret)
		: "a"(num), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
		: "rcx", "r11", "memory");
	return ret;
}

/* Install SA_SIGINFO handler `h` for `sig` (with extra `flags`) and an empty mask. */
static inline void install(int sig, int flags, void (*h)(int, siginfo_t *, void *))
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = h;
	sa.sa_flags = SA_SIGINFO | flags;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
}

#endif
