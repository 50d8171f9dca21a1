/* crash_ud.c: invalid opcode (ud2) inside crash_here(). */
#include <stdio.h>

__attribute__((noinline)) void crash_here(void)
{
	__asm__ volatile("ud2");
}

int main(void)
{
	printf("crashing: ud2\n");
	fflush(stdout);
	crash_here();
	printf("FAIL still alive\n");
	return 0;
}
