/* crash_gp.c: general protection fault from a non-canonical address. */
#include <stdint.h>
#include <stdio.h>

__attribute__((noinline)) uint64_t crash_here(uintptr_t addr)
{
	return *(volatile uint64_t *)addr;
}

int main(void)
{
	printf("crashing: non-canonical access\n");
	fflush(stdout);
	uint64_t v = crash_here((uintptr_t)0x8000000000000000ull);
	printf("FAIL still alive %llu\n", (unsigned long long)v);
	return 0;
}
