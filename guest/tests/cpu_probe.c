/* cpu_probe.c: the CPU as a guest sees it (CPUID feature bits, XCR0 through xgetbv), printed
   by main() and answered by every request, so a test can check that they agree with what
   edgevm enabled (edgevm_kvm::features): no advertised feature whose state XCR0 lacks. */
#include "kvm_api.h"
#include <cpuid.h>
#include <stdio.h>
#include <stdint.h>

static int facts(char *out, size_t size)
{
	unsigned a, b, c, d;
	__cpuid(1, a, b, c, d);
	const int xsave = (c >> 26) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
	unsigned b7 = 0, c7 = 0, d7 = 0, dmax = 0;
	__cpuid(0, dmax, b, c, d);
	if (dmax >= 7)
		__cpuid_count(7, 0, a, b7, c7, d7);
	unsigned d_eax = 0, d_ecx = 0;
	if (dmax >= 0xd)
		__cpuid_count(0xd, 0, d_eax, b, d_ecx, d);
	unsigned long long xcr0 = 0;
	if (osxsave) {
		unsigned lo, hi;
		__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
		xcr0 = ((unsigned long long)hi << 32) | lo;
	}
	return snprintf(out, size,
		"xsave=%d osxsave=%d avx=%d avx2=%u avx512f=%u pku=%u ospke=%u amx=%u "
		"xcr0=%#llx cpuid_d_eax=%#x cpuid_d_ecx=%u\n",
		xsave, osxsave, avx, (b7 >> 5) & 1, (b7 >> 16) & 1, (c7 >> 3) & 1, (c7 >> 4) & 1,
		(d7 >> 24) & 1, xcr0, d_eax, d_ecx);
}

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	char out[256];
	const int n = facts(out, sizeof(out));
	backend_response(200, "text/plain", 10, out, (size_t)n);
}

int main(void)
{
	char out[256];
	facts(out, sizeof(out));
	printf("cpu: %s", out);
	fflush(stdout);
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
