#include "kvm_api.h"
#include <string.h>
#include <stdio.h>
static int storage_counter = 0;

static void increment_counter(size_t n, struct virtbuffer buf[n], size_t res)
{
	storage_counter ++;

	storage_return(&storage_counter, sizeof(storage_counter));
}

static void
on_get(const char *url, const char *arg)
{
	int counter;
	storage_call(increment_counter, 0, 0, &counter, sizeof(counter));

	http_setf(BERESP, "X-Counter: %d", counter);

	backend_response_str(200, "text/plain", "Hello Compute World!\n");
}

int main(int argc, char **argv)
{
	/* IS_STORAGE() macro tells us if we are currently in the storage VM */ 
	if (IS_STORAGE()) {
		puts("Hello Storage World!");
		fflush(stdout);
	}

	/* Only allow this function to be called in storage */
	STORAGE_ALLOW(increment_counter);

	set_backend_get(on_get);
	wait_for_requests();
}
