/* args_env.c: prints argv and the KVM_* environment, then exits with the
   status given as argv[1] (default 0), so exit status propagation can be
   tested. The user variable checked is EDGEVM_TEST_VAR. */
#include <stdio.h>
#include <stdlib.h>

static void show(const char *name)
{
	const char *v = getenv(name);
	printf("%s=%s\n", name, v != NULL ? v : "(unset)");
}

int main(int argc, char **argv)
{
	printf("argc=%d\n", argc);
	for (int i = 0; i < argc; i++)
		printf("argv[%d]=%s\n", i, argv[i]);
	show("KVM_NAME");
	show("KVM_GROUP");
	show("KVM_TYPE");
	show("KVM_STATE");
	show("KVM_DEBUG");
	show("EDGEVM_TEST_VAR");
	fflush(stdout);
	exit(argc > 1 ? atoi(argv[1]) : 0);
}
