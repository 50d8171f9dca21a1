/* crash_stack.c: stack overflow by unbounded recursion in crash_here().
   The frame is touched from crash_here() itself (no memset call), so the
   faulting instruction is inside crash_here. */
#include <stdio.h>

/* Never reached; keeps the compiler from proving infinite recursion. */
volatile long crash_depth_limit = -1;

__attribute__((noinline)) long crash_here(long depth)
{
	volatile char frame[16384];
	for (long i = (long)sizeof(frame) - 1; i >= 0; i -= 512)
		frame[i] = (char)depth;
	if (depth == crash_depth_limit)
		return 0;
	/* Not a tail call: the result is used after the recursive call. */
	long r = crash_here(depth + 1);
	return r + frame[depth & 1023];
}

int main(void)
{
	printf("crashing: stack overflow\n");
	fflush(stdout);
	long r = crash_here(0);
	printf("FAIL still alive %ld\n", r);
	return 0;
}
