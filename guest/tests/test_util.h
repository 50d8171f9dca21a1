/* test_util.h: small helpers shared by the test guests (not part of the API). */
#ifndef EDGEVM_TEST_UTIL_H
#define EDGEVM_TEST_UTIL_H
#include "kvm_api.h"
#include <stdint.h>
#include <string.h>

/* Answer `status` with `text` as text/plain. */
static inline void respond(int status, const char *text)
{
	backend_response((int16_t)status, "text/plain", 10, text, strlen(text));
}

/* The second path segment of url (/<program>/<action>?...) into out. */
static inline void action_of(const char *url, char *out, size_t outl)
{
	const char *p = url;
	if (*p == '/')
		p++;
	p = strchr(p, '/');
	size_t n = 0;
	if (p != NULL) {
		p++;
		while (p[n] != 0 && p[n] != '?' && p[n] != '/' && n + 1 < outl)
			n++;
		memcpy(out, p, n);
	}
	out[n] = 0;
}

/* The value of query parameter `key` (as text, up to '&' or the end), or NULL. */
static inline const char *query_param(const char *url, const char *key)
{
	const char *q = strchr(url, '?');
	const size_t kl = strlen(key);
	while (q != NULL) {
		q++;
		if (strncmp(q, key, kl) == 0 && q[kl] == '=')
			return q + kl + 1;
		q = strchr(q, '&');
	}
	return NULL;
}
#endif
