/* The `wasmtime serve` peer of scripts/bench.sh: a wasi:http/proxy component answering
   "Hello World!" (text/plain, X-Powered-By: edgevm) like guest/examples/hello.c. wasmtime
   serve instantiates the component afresh for every request (per-request isolation).
   Built by scripts/bench-wasm.sh with clang --target=wasm32-wasi against bindings generated
   by wit-bindgen for the wasi:http WIT shipped with wasmtime. */
#include "proxy.h"
#include <string.h>

static void header(wasi_http_types_borrow_fields_t h, const char *name, const char *value)
{
	wasi_http_types_field_name_t n = { (uint8_t *)name, strlen(name) };
	wasi_http_types_field_value_t v = { (uint8_t *)value, strlen(value) };
	wasi_http_types_header_error_t err;
	wasi_http_types_method_fields_append(h, &n, &v, &err);
}

void exports_wasi_http_incoming_handler_handle(
	exports_wasi_http_incoming_handler_own_incoming_request_t request,
	exports_wasi_http_incoming_handler_own_response_outparam_t response_out)
{
	static const char body[] = "Hello World!\n";
	wasi_http_types_incoming_request_drop_own(request);

	wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
	wasi_http_types_borrow_fields_t h = wasi_http_types_borrow_fields(headers);
	header(h, "x-powered-by", "edgevm");
	header(h, "content-type", "text/plain");
	header(h, "content-length", "13");
	wasi_http_types_own_outgoing_response_t resp =
		wasi_http_types_constructor_outgoing_response(headers);

	wasi_http_types_own_outgoing_body_t obody;
	wasi_http_types_method_outgoing_response_body(
		wasi_http_types_borrow_outgoing_response(resp), &obody);

	wasi_http_types_result_own_outgoing_response_error_code_t result = { .is_err = false };
	result.val.ok = resp;
	wasi_http_types_static_response_outparam_set(response_out, &result);

	wasi_http_types_own_output_stream_t stream;
	wasi_http_types_method_outgoing_body_write(
		wasi_http_types_borrow_outgoing_body(obody), &stream);
	proxy_list_u8_t contents = { (uint8_t *)body, sizeof(body) - 1 };
	wasi_io_streams_stream_error_t serr;
	wasi_io_streams_method_output_stream_blocking_write_and_flush(
		wasi_io_streams_borrow_output_stream(stream), &contents, &serr);
	wasi_io_streams_output_stream_drop_own(stream);

	wasi_http_types_error_code_t ferr;
	wasi_http_types_static_outgoing_body_finish(obody, NULL, &ferr);
}
