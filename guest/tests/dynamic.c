/* dynamic.c: a dynamically linked handler (PT_INTERP), for tests/all/files.rs. edgevm boots
   the host's ld.so with this program as its argument; ld.so loads libc through allowed_paths,
   main() dlopen()s libm and every request calls its cos(). */
#include "kvm_api.h"
#include <dlfcn.h>
#include <stdio.h>

static double (*cosine)(double);

static void on_get(const char *url, const char *arg)
{
	(void)url;
	(void)arg;
	char out[128];
	snprintf(out, sizeof(out), "dynamic: cos(0)=%.1f", cosine(0.0));
	backend_response_str(200, "text/plain", out);
}

int main(void)
{
	void *m = dlopen("libm.so.6", RTLD_NOW);
	if (m == NULL) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	cosine = (double (*)(double))dlsym(m, "cos");
	printf("dynamic: libm loaded\n");
	set_backend_get(on_get);
	wait_for_requests();
}
