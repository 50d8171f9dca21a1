// fetch.cpp: sys_fetch() behind a small curl-like C++ wrapper.
//   GET  /fetchpp?URL   fetches URL and reports what came back
//   POST /fetchpp?URL   sends the request body to URL (same content type)
#include "kvm_api.h"
#include <cstring>
#include <string>
#include <vector>

namespace http {

struct Response {
	int status = 0;           // 0: the request failed (see the server log)
	std::string content_type;
	std::string headers;      // "name: value\r\n" lines
	std::string body;
	bool ok() const { return status >= 200 && status < 300; }
};

class Client {
public:
	Client &header(std::string field)
	{
		if (fields_.size() < CURL_FIELDS_COUNT)
			fields_.push_back(std::move(field));
		return *this;
	}
	Client &follow_redirects(bool on = true) { follow_ = on; return *this; }

	Response get(const std::string &url) { return send(nullptr, url, nullptr); }
	Response post(const std::string &url, const std::string &body,
		const std::string &content_type)
	{
		header("Content-Type: " + content_type);
		return send(nullptr, url, &body);
	}
	Response request(const char *method, const std::string &url, const std::string *body)
	{
		return send(method, url, body);
	}

private:
	Response send(const char *method, const std::string &url, const std::string *body)
	{
		curl_op op {};
		curl_fields fields {};
		for (size_t i = 0; i < fields_.size(); i++) {
			fields.ptr[i] = fields_[i].c_str();
			fields.len[i] = (uint16_t)fields_[i].size();
		}
		curl_options opts {};
		opts.follow_location = follow_;
		opts.method = method;
		if (body) {
			op.post_buffer = body->data();
			op.post_buflen = (uint32_t)body->size();
		}
		Response r;
		if (sys_fetch(url.data(), url.size(), &op, &fields, &opts) != 0)
			return r;
		r.status = (int)op.status;
		r.content_type.assign(op.ctype, op.ctlen);
		if (op.headers)
			r.headers.assign(op.headers, op.headers_length);
		if (op.content)
			r.body.assign((const char *)op.content, op.content_length);
		return r;
	}

	std::vector<std::string> fields_;
	bool follow_ = false;
};

} // namespace http

static void reply(const http::Response &r)
{
	std::string text = "status=" + std::to_string(r.status) + " type=" + r.content_type +
		" body=" + r.body;
	backend_response(200, "text/plain", 10, text.data(), text.size());
}

static const char *target(const char *url)
{
	const char *q = std::strchr(url, '?');
	return q ? q + 1 : "";
}

static void on_get(const char *url, const char *)
{
	reply(http::Client().header("X-Client: cpp").follow_redirects().get(target(url)));
}

static void on_post(const char *url, const char *, const char *ctype, const uint8_t *data,
	size_t len)
{
	std::string body((const char *)data, len);
	reply(http::Client().post(target(url), body, ctype && *ctype ? ctype : "text/plain"));
}

int main()
{
	set_backend_get(on_get);
	set_backend_post(on_post);
	wait_for_requests();
}
