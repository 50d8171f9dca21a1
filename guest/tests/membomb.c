/* membomb.c: allocates and touches 1 MB blocks until malloc fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
	size_t mb = 0;
	for (;;) {
		char *p = malloc(1 << 20);
		if (p == NULL)
			break;
		memset(p, 0xA5, 1 << 20);
		mb++;
	}
	printf("ENOMEM after %zu MB\n", mb);
	return 0;
}
