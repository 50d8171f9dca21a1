/* hello.c: the smallest guest. Built with glibc (gcc -static) and with musl
   (musl-gcc -static; detected by the absence of __GLIBC__). Checks that
   argv and the environment were set up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* glibc defines __GLIBC__ (via <features.h>); musl defines nothing. */
#if defined(__GLIBC__) && !defined(EDGEVM_MUSL)
#define LIBC_NAME "glibc"
#else
#define LIBC_NAME "musl"
#endif

extern char **environ;

int main(int argc, char **argv)
{
	printf("Hello World from C (" LIBC_NAME ")!\n");
	if (argc < 1 || argv[0] == NULL || argv[0][0] == 0) {
		printf("FAIL argv: argc=%d\n", argc);
		return 1;
	}
	if (argv[argc] != NULL) {
		printf("FAIL argv not NULL-terminated\n");
		return 1;
	}
	int nenv = 0;
	for (char **e = environ; e != NULL && *e != NULL; e++)
		nenv++;
	printf("argc=%d argv[0]=%s envc=%d\n", argc, argv[0], nenv);
	const char *name = getenv("KVM_NAME");
	if (name != NULL)
		printf("KVM_NAME=%s\n", name);
	return 0;
}
