//! `kvm_api.h` call numbers: `mov $NUM,%eax; out %eax,$0` with SysV argument registers, the
//! same numbers as the reference system so binaries built against its header run unchanged.

/// register_func(idx, fn) — see [`crate::func`].
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
/// begin_streaming_response(status, ctype, ctlen, content_length, cb, arg).
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
/// sys_regex_compile(pattern, len).
pub const REGEX_COMPILE: u32 = 0x10030;
/// sys_regex_free(rgx).
pub const REGEX_FREE: u32 = 0x10031;
/// sys_regex_match(rgx, buf, len).
pub const REGEX_MATCH: u32 = 0x10032;
/// sys_regex_subst(rgx, buf, subst, dst, dstlen, flags).
pub const REGEX_SUBST: u32 = 0x10033;
/// sys_regex_copyto(rgx, srchp, dsthp).
pub const REGEX_COPYTO: u32 = 0x10035;
/// sys_sockets_write(events, n).
pub const SOCKETS_WRITE: u32 = 0x10500;
/// shared_memory_area() -> {ptr, end} in rax:rdx.
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
/// The return trampoline: a handler returned without responding (not a `kvm_api.h` call).
pub const RETURNED: u32 = 0xFFFF;

/// Every `kvm_api.h` call: (header macro suffix, number, name in logs). The header's macro is
/// `EDGEVM_HYPERCALL_<suffix>`; a test checks each one against `guest/kvm_api.h`.
pub const ALL: &[(&str, u32, &str)] = &[
    ("REGISTER_FUNC", REGISTER_FUNC, "register_func"),
    ("WAIT_FOR_REQUESTS", WAIT_FOR_REQUESTS, "wait_for_requests"),
    (
        "WAIT_PAUSED",
        WAIT_FOR_REQUESTS_PAUSED,
        "wait_for_requests_paused",
    ),
    ("SET_CACHEABLE", SET_CACHEABLE, "set_cacheable"),
    ("BACKEND_RESPONSE", BACKEND_RESPONSE, "backend_response"),
    ("STORAGE_RETURN", STORAGE_RETURN, "storage_return"),
    (
        "STREAMING_RESPONSE",
        BEGIN_STREAMING,
        "begin_streaming_response",
    ),
    ("STORAGE_NORETURN", STORAGE_NORETURN, "storage_noreturn"),
    ("HTTP_APPEND", HTTP_APPEND, "http_append"),
    ("HTTP_SET", HTTP_SET, "http_set"),
    ("HTTP_FIND", HTTP_FIND, "http_find"),
    ("HTTP_METHOD", HTTP_METHOD, "http_method"),
    ("REGEX_COMPILE", REGEX_COMPILE, "regex_compile"),
    ("REGEX_FREE", REGEX_FREE, "regex_free"),
    ("REGEX_MATCH", REGEX_MATCH, "regex_match"),
    ("REGEX_SUBST", REGEX_SUBST, "regex_subst"),
    ("REGEX_COPYTO", REGEX_COPYTO, "regex_copyto"),
    ("SOCKETS_WRITE", SOCKETS_WRITE, "sockets_write"),
    (
        "SHARED_MEMORY_AREA",
        SHARED_MEMORY_AREA,
        "shared_memory_area",
    ),
    ("MAKE_EPHEMERAL", MAKE_EPHEMERAL, "make_ephemeral"),
    ("IS_STORAGE", IS_STORAGE, "is_storage"),
    ("STORAGE_ALLOW", STORAGE_ALLOW, "storage_allow"),
    ("STORAGE_CALLV", STORAGE_CALLV, "storage_callv"),
    ("STORAGE_TASK", STORAGE_TASK, "storage_task"),
    ("STOP_STORAGE_TASK", STOP_STORAGE_TASK, "stop_storage_task"),
    ("MULTIPROCESS", MULTIPROCESS, "multiprocess"),
    (
        "MULTIPROCESS_ARRAY",
        MULTIPROCESS_ARRAY,
        "multiprocess_array",
    ),
    (
        "MULTIPROCESS_CLONE",
        MULTIPROCESS_CLONE,
        "multiprocess_clone",
    ),
    ("MULTIPROCESS_WAIT", MULTIPROCESS_WAIT, "multiprocess_wait"),
    ("GET_MEMINFO", GET_MEMINFO, "get_meminfo"),
    ("FETCH", FETCH, "fetch"),
    ("REQUEST", REQUEST, "request"),
    ("LOG", LOG, "log"),
    ("BREAKPOINT", BREAKPOINT, "breakpoint"),
    ("IS_DEBUG", IS_DEBUG, "is_debug"),
];

/// Name of a call number, for logs.
pub fn name(num: u32) -> &'static str {
    if num == RETURNED {
        return "return";
    }
    ALL.iter()
        .find(|(_, n, _)| *n == num)
        .map_or("unknown", |(_, _, name)| name)
}
