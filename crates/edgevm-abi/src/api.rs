//! `kvm_api.h` hypercalls: `mov $NUM,%eax; out %eax,$0` with SysV argument registers, the
//! same numbers as the reference system so binaries built against its header run unchanged.

/// register_func(idx, fn) — idx 1 GET, 2 POST, 3 request, 4 stream POST, 5 on_error,
/// 6 on_live_update, 7 on_live_restore, 12 socket pause.
pub const REGISTER_FUNC: u32 = 0x10000;
/// wait_for_requests(): end of initialization; the VM is frozen here.
pub const WAIT_FOR_REQUESTS: u32 = 0x10001;
/// wait_for_requests_paused(struct kvm_request*).
pub const WAIT_FOR_REQUESTS_PAUSED: u32 = 0x10002;
/// sys_set_cacheable(cached, ttl_ms, grace_ms, keep_ms).
pub const SET_CACHEABLE: u32 = 0x10005;
/// sys_backend_response(status, ctype, ctlen, content, clen, extra).
pub const BACKEND_RESPONSE: u32 = 0x10010;
/// storage_return(data, len).
pub const STORAGE_RETURN: u32 = 0x10011;
/// begin_streaming_response(...).
pub const BEGIN_STREAMING: u32 = 0x10012;
/// storage_noreturn(data, len).
pub const STORAGE_NORETURN: u32 = 0x10013;
/// sys_http_append(where, str, len).
pub const HTTP_APPEND: u32 = 0x10020;
/// sys_http_set(where, str, len).
pub const HTTP_SET: u32 = 0x10021;
/// sys_http_find(where, key, klen, outb, outl).
pub const HTTP_FIND: u32 = 0x10022;
/// sys_http_method(outb, outl).
pub const HTTP_METHOD: u32 = 0x10023;
/// Regex calls (compile, free, match, subst, copyto).
pub const REGEX_COMPILE: u32 = 0x10030;
/// Regex free.
pub const REGEX_FREE: u32 = 0x10031;
/// Regex match.
pub const REGEX_MATCH: u32 = 0x10032;
/// Regex subst.
pub const REGEX_SUBST: u32 = 0x10033;
/// Regex copyto.
pub const REGEX_COPYTO: u32 = 0x10035;
/// sys_sockets_write(events, n).
pub const SOCKETS_WRITE: u32 = 0x10500;
/// shared_memory_area() -> {ptr, end}.
pub const SHARED_MEMORY_AREA: u32 = 0x10700;
/// sys_make_ephemeral(int).
pub const MAKE_EPHEMERAL: u32 = 0x10703;
/// sys_is_storage().
pub const IS_STORAGE: u32 = 0x10706;
/// sys_storage_allow(fn).
pub const STORAGE_ALLOW: u32 = 0x10707;
/// storage_callv(fn, n, bufs, dst, dstlen).
pub const STORAGE_CALLV: u32 = 0x10708;
/// sys_storage_task(fn, data, len, start_ms, period_ms).
pub const STORAGE_TASK: u32 = 0x10709;
/// stop_storage_task(id).
pub const STOP_STORAGE_TASK: u32 = 0x1070A;
/// multiprocess(n, fn, arg).
pub const MULTIPROCESS: u32 = 0x10710;
/// multiprocess_array(n, fn, array, elsize).
pub const MULTIPROCESS_ARRAY: u32 = 0x10711;
/// multiprocess_clone(n, stack_base, stack_size).
pub const MULTIPROCESS_CLONE: u32 = 0x10712;
/// multiprocess_wait().
pub const MULTIPROCESS_WAIT: u32 = 0x10713;
/// get_meminfo(struct meminfo*).
pub const GET_MEMINFO: u32 = 0x10A00;
/// sys_fetch(url, len, op, fields, options).
pub const FETCH: u32 = 0x20000;
/// sys_request (declared by the reference, never dispatched there either).
pub const REQUEST: u32 = 0x20001;
/// sys_log(buf, len).
pub const LOG: u32 = 0x7F000;
/// sys_breakpoint().
pub const BREAKPOINT: u32 = 0x7F7F7;
/// sys_is_debug().
pub const IS_DEBUG: u32 = 0x7FDEB;
/// The return trampoline: a handler returned without responding.
pub const RETURNED: u32 = 0xFFFF;

/// Name of a hypercall number, for logs.
pub fn name(num: u32) -> &'static str {
    match num {
        REGISTER_FUNC => "register_func",
        WAIT_FOR_REQUESTS => "wait_for_requests",
        WAIT_FOR_REQUESTS_PAUSED => "wait_for_requests_paused",
        SET_CACHEABLE => "set_cacheable",
        BACKEND_RESPONSE => "backend_response",
        STORAGE_RETURN => "storage_return",
        BEGIN_STREAMING => "begin_streaming_response",
        STORAGE_NORETURN => "storage_noreturn",
        HTTP_APPEND => "http_append",
        HTTP_SET => "http_set",
        HTTP_FIND => "http_find",
        HTTP_METHOD => "http_method",
        REGEX_COMPILE => "regex_compile",
        REGEX_FREE => "regex_free",
        REGEX_MATCH => "regex_match",
        REGEX_SUBST => "regex_subst",
        REGEX_COPYTO => "regex_copyto",
        SOCKETS_WRITE => "sockets_write",
        SHARED_MEMORY_AREA => "shared_memory_area",
        MAKE_EPHEMERAL => "make_ephemeral",
        IS_STORAGE => "is_storage",
        STORAGE_ALLOW => "storage_allow",
        STORAGE_CALLV => "storage_callv",
        STORAGE_TASK => "storage_task",
        STOP_STORAGE_TASK => "stop_storage_task",
        MULTIPROCESS => "multiprocess",
        MULTIPROCESS_ARRAY => "multiprocess_array",
        MULTIPROCESS_CLONE => "multiprocess_clone",
        MULTIPROCESS_WAIT => "multiprocess_wait",
        GET_MEMINFO => "get_meminfo",
        FETCH => "fetch",
        REQUEST => "request",
        LOG => "log",
        BREAKPOINT => "breakpoint",
        IS_DEBUG => "is_debug",
        RETURNED => "return",
        _ => "unknown",
    }
}
