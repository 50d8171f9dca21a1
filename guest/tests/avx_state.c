/* avx_state.c: register isolation between requests. Each request reports the upper half of
   ymm1 and the low half of xmm2 as they are when the handler starts, then leaves a marker in
   both. With a correct per-request reset every request sees the frozen values (zeroes). */
#include "kvm_api.h"
#include <stdio.h>
#include <stdint.h>

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	uint64_t hi[2], lo[2];
	__asm__ volatile(
		"vextracti128 $1, %%ymm1, %%xmm3\n\t"
		"vmovdqu %%xmm3, %0\n\t"
		"movdqu %%xmm2, %1\n\t"
		: "=m"(hi), "=m"(lo) : : "xmm3");
	char out[128];
	const int n = snprintf(out, sizeof(out), "ymm1.hi=%016llx%016llx xmm2=%016llx%016llx",
		(unsigned long long)hi[1], (unsigned long long)hi[0],
		(unsigned long long)lo[1], (unsigned long long)lo[0]);
	/* Leave markers for the next request to find if isolation were broken. */
	static const uint64_t marker[4] = {
		0x1111111111111111ull, 0x2222222222222222ull,
		0x3333333333333333ull, 0x4444444444444444ull };
	__asm__ volatile(
		"vmovdqu %0, %%ymm1\n\t"
		"vmovdqu %0, %%ymm2\n\t"
		: : "m"(marker) : "xmm1", "xmm2");
	backend_response(200, "text/plain", 10, out, (size_t)n);
}

int main(void)
{
	__asm__ volatile("vpxor %%ymm1, %%ymm1, %%ymm1\n\tvpxor %%ymm2, %%ymm2, %%ymm2" ::: "xmm1", "xmm2");
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
