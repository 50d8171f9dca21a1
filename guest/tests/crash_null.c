/* crash_null.c: page fault writing to NULL+8 inside crash_here(). */
#include <stdio.h>

__attribute__((noinline)) void crash_here(volatile int *p)
{
	p[2] = 42; /* address 8 */
}

int main(void)
{
	printf("crashing: null write\n");
	fflush(stdout);
	crash_here((volatile int *)0);
	printf("FAIL still alive\n");
	return 0;
}
