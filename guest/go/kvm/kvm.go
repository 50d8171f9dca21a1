// Package kvm gives Go programs the kvm_api calls of edgevm (and of the reference system:
// same call numbers and structures as guest/kvm_api.h) without cgo, so a program builds with
// CGO_ENABLED=0 into one static binary.
//
// A Go program serves requests as an event loop: NextRequest freezes the program the first
// time (initialization is over: every goroutine and runtime thread is frozen with it) and
// returns each request; Respond answers it. Goroutines, channels, timers and the rest of the
// runtime work inside the request as usual.
//
//	for {
//		req := kvm.NextRequest()
//		kvm.Respond(200, "text/plain", []byte("Hello from Go: "+req.URL))
//	}
package kvm

import (
	"runtime"
	"unsafe"
)

// Call numbers (guest/kvm_api.h, EDGEVM_HYPERCALL_*).
const (
	callWaitPaused  = 0x10002
	callResponse    = 0x10010
	callHTTPAppend  = 0x10020
	callHTTPFind    = 0x10022
	callLog         = 0x7F000
	infoFlagWarmup  = 0x1
	maxHeaderLength = 65535
)

// Where a header call looks (kvm_api.h: REQ, RESP).
const (
	Req  = 0
	Resp = 1
)

// hypercall makes kvm_api call `num` with up to six arguments (kvm_api_amd64.s).
func hypercall(num, a0, a1, a2, a3, a4, a5 uintptr) uintptr

// waitPaused is wait_for_requests_paused(req) on a stack with room below it for the host's
// resume trampoline (kvm_api_amd64.s).
func waitPaused(req uintptr)

// rawRequest is struct kvm_request.
type rawRequest struct {
	method, url, arg, contentType             uintptr
	methodLen, urlLen, argLen, contentTypeLen uint16
	content                                   uintptr
	contentLen                                uint64
	headers                                   uintptr
	numHeaders, infoFlags                     uint16
	reserved0                                 uint32
	prng                                      [2]uint64
}

// rawHeader is struct kvm_request_header.
type rawHeader struct {
	field                uintptr
	fieldColon, fieldLen uint32
}

// Request is one request, copied out of the VM's request area.
type Request struct {
	Method, URL, Arg, ContentType string
	Body                          []byte
	// Headers as "Key: value" fields.
	Headers []string
	// Warmup requests come from the server's warmup, not from a client.
	Warmup bool
}

// The request the host writes: a global, so it never moves and never is on a goroutine stack.
var raw rawRequest

func str(p uintptr, n int) string {
	if p == 0 || n == 0 {
		return ""
	}
	return string(unsafe.Slice((*byte)(unsafe.Pointer(p)), n))
}

// NextRequest waits for the next request: the first call ends the program's initialization
// (the VM is frozen here and every request starts from this point).
func NextRequest() *Request {
	waitPaused(uintptr(unsafe.Pointer(&raw)))
	r := &Request{
		Method:      str(raw.method, int(raw.methodLen)),
		URL:         str(raw.url, int(raw.urlLen)),
		Arg:         str(raw.arg, int(raw.argLen)),
		ContentType: str(raw.contentType, int(raw.contentTypeLen)),
		Warmup:      raw.infoFlags&infoFlagWarmup != 0,
	}
	if raw.content != 0 && raw.contentLen > 0 {
		r.Body = []byte(str(raw.content, int(raw.contentLen)))
	}
	for i := 0; i < int(raw.numHeaders); i++ {
		h := (*rawHeader)(unsafe.Pointer(raw.headers + uintptr(i)*unsafe.Sizeof(rawHeader{})))
		r.Headers = append(r.Headers, str(h.field, int(h.fieldLen)))
	}
	return r
}

// Respond answers the current request (backend_response): status 200..599.
func Respond(status int, contentType string, body []byte) {
	ct := []byte(contentType)
	var ctp, bp uintptr
	if len(ct) > 0 {
		ctp = uintptr(unsafe.Pointer(&ct[0]))
	}
	if len(body) > 0 {
		bp = uintptr(unsafe.Pointer(&body[0]))
	}
	// Nothing else runs while the VM is in a call: the buffers cannot move or go.
	hypercall(callResponse, uintptr(status), ctp, uintptr(len(ct)), bp, uintptr(len(body)), 0)
	runtime.KeepAlive(ct)
	runtime.KeepAlive(body)
}

// SetHeader appends a "Key: value" field to the response (where = Resp) (sys_http_append);
// false when the host refused it.
func SetHeader(where int, field string) bool {
	if len(field) == 0 || len(field) > maxHeaderLength {
		return false
	}
	f := []byte(field)
	r := hypercall(callHTTPAppend, uintptr(where), uintptr(unsafe.Pointer(&f[0])), uintptr(len(f)), 0, 0, 0)
	runtime.KeepAlive(f)
	return int64(r) > 0
}

// Log writes a line to the program's log (sys_log).
func Log(line string) {
	if len(line) == 0 {
		return
	}
	b := []byte(line)
	hypercall(callLog, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0, 0)
	runtime.KeepAlive(b)
}
