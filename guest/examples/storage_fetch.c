/* storage_fetch.c: a storage VM keeps a copy of a resource fresh. A periodic
   storage task (every 200 ms) fetches /storage_fetch/source from the server
   itself (a self-request, served by this program's request VMs) and keeps
   the answer in storage; GET /storage_fetch shows what storage holds.
   Configuration: "storage": true. */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

static char copy[256];
static size_t copy_len;
static unsigned refreshes;

/* Runs in the storage VM, on the storage queue. */
static void refresh(void *data, size_t len)
{
	(void)data;
	(void)len;
	static const char path[] = "/storage_fetch/source";
	struct curl_op op;
	memset(&op, 0, sizeof(op));
	op.content = copy;
	op.content_length = sizeof(copy) - 1;
	if (sys_fetch(path, sizeof(path) - 1, &op, NULL, NULL) == 0 && op.status == 200) {
		copy_len = op.content_length;
		refreshes++;
	}
}

static void read_copy(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)buf;
	(void)res;
	char text[320];
	const int len = snprintf(text, sizeof(text), "refreshes=%u copy=%.*s", refreshes,
		(int)copy_len, copy);
	storage_return(text, (size_t)len);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	if (strcmp(url, "/storage_fetch/source") == 0) {
		backend_response_str(200, "text/plain", "fresh data");
	}
	char text[320];
	const long len = storage_call(read_copy, NULL, 0, text, sizeof(text));
	backend_response(200, "text/plain", 10, text, len > 0 ? (size_t)len : 0);
}

int main(void)
{
	if (!IS_STORAGE()) {
		/* From the request program's main(): the task runs in storage. */
		schedule_storage_task(refresh, NULL, 0, 0.2f, 0.2f);
	}
	set_backend_get(on_get);
	wait_for_requests();
}
