// api_cpp.cpp: kvm_api.h from C++ (compile check + a tiny C++ handler).
#include "kvm_api.h"
#include <cstdio>
#include <string>

static std::string *greeting;
static int *shm_counter;

static void on_get(const char *url, const char *)
{
	std::string body = *greeting + " " + url;
	http_setf(RESP, "X-Len: %zu", body.size());
	backend_response(200, "text/plain", 10, body.data(), body.size());
}

static void storage_fn(size_t, struct virtbuffer[], size_t) { storage_return_nothing(); }

int main(int, char **argv)
{
	greeting = new std::string("Hello from C++");
	if (IS_LINUX_MAIN()) {
		std::printf("api_cpp: linked OK (%s)\n", argv[0]);
		return 0;
	}
	shm_counter = SHM_ALLOC_TYPE(int);
	auto *x = SHM_ALLOC(*shm_counter);
	(void)x;
	STORAGE_ALLOW(storage_fn);
	set_backend_get(on_get);
	wait_for_requests();
}
