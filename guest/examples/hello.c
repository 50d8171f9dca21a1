/* hello.c: answers every GET with "Hello World!". */
#include "kvm_api.h"
#include <stdio.h>

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	http_set_str(RESP, "X-Powered-By: edgevm");
	backend_response_str(200, "text/plain", "Hello World!\n");
}

int main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	if (IS_LINUX_MAIN()) {
		puts("hello: run me inside edgevm");
		return 0;
	}
	set_backend_get(on_get);
	wait_for_requests();
}
