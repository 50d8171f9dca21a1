/* crash_div.c: integer division by zero (#DE) inside crash_here(). */
#include <stdio.h>

__attribute__((noinline)) int crash_here(int a, int b)
{
	volatile int x = a, y = b;
	return x / y;
}

int main(void)
{
	printf("crashing: divide by zero\n");
	fflush(stdout);
	int r = crash_here(1, 0);
	printf("FAIL still alive %d\n", r);
	return 0;
}
