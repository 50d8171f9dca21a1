/* wait.c: minimal serving guest. Prints "init done", then waits for
   requests; every GET is answered with "Hello". */
#include "kvm_api.h"
#include <stdio.h>

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	backend_response_str(200, "text/plain", "Hello");
}

int main(void)
{
	set_backend_get(on_get);
	printf("init done\n");
	fflush(stdout);
	wait_for_requests();
	return 0;
}
