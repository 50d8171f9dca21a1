/* headers.c: looks up a few request headers with http_find and echoes them
   back as JSON. */
#include "kvm_api.h"
#include <stdio.h>
#include <string.h>

static const char *const names[] = {
	"Host", "User-Agent", "Accept", "Content-Type", "X-Test",
};

/* Append `s` as a JSON string literal. */
static size_t json_str(char *out, size_t pos, size_t cap, const char *s, size_t len)
{
	if (pos < cap) out[pos++] = '"';
	for (size_t i = 0; i < len && pos + 7 < cap; i++) {
		const unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			out[pos++] = '\\';
			out[pos++] = (char)c;
		} else if (c < 0x20) {
			pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
		} else {
			out[pos++] = (char)c;
		}
	}
	if (pos < cap) out[pos++] = '"';
	return pos;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	static char out[16384];
	const size_t cap = sizeof(out) - 4;
	size_t pos = 0;
	char method[16] = "";
	const unsigned long mlen = sys_http_method(method, sizeof(method) - 1);
	method[mlen < sizeof(method) ? mlen : 0] = 0;

	pos += (size_t)snprintf(out + pos, cap - pos, "{\n  \"method\": ");
	pos = json_str(out, pos, cap, method, strlen(method));
	pos += (size_t)snprintf(out + pos, cap - pos, ",\n  \"url\": ");
	pos = json_str(out, pos, cap, url, strlen(url));
	pos += (size_t)snprintf(out + pos, cap - pos, ",\n  \"headers\": {");

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char field[4096];
		const unsigned len = http_find_str(REQ, names[i], field, sizeof(field));
		pos += (size_t)snprintf(out + pos, cap - pos, "%s\n    ", i ? "," : "");
		pos = json_str(out, pos, cap, names[i], strlen(names[i]));
		pos += (size_t)snprintf(out + pos, cap - pos, ": ");
		if (len == 0) {
			pos += (size_t)snprintf(out + pos, cap - pos, "null");
			continue;
		}
		/* The result is the whole "Key: value" field; skip to the value. */
		const char *value = memchr(field, ':', len);
		value = value ? value + 1 : field;
		while (value < field + len && *value == ' ')
			value++;
		pos = json_str(out, pos, cap, value, (size_t)(field + len - value));
	}
	pos += (size_t)snprintf(out + pos, cap - pos, "\n  }\n}\n");
	if (pos > cap)
		pos = cap;
	backend_response(200, "application/json", 16, out, pos);
}

static void on_post(const char *url, const char *arg, const char *ctype,
	const uint8_t *data, size_t len)
{
	(void)ctype;
	(void)data;
	(void)len;
	on_get(url, arg);
}

int main(void)
{
	set_backend_get(on_get);
	set_backend_post(on_post);
	wait_for_requests();
}
