/* loop_forever.c: never returns; used to test timeouts. */
int main(void)
{
	for (;;)
		__asm__ volatile("");
}
