//! `kvm_api.h` call numbers: `mov $NUM,%eax; out %eax,$0` with SysV argument registers, the
//! same numbers as the reference system so binaries built against its header run unchanged.

/// Defines each call-number constant and [`ALL`] from one list, so a number cannot be left
/// out of the table the header test and the log names use.
macro_rules! calls {
    ($($(#[$doc:meta])* $konst:ident = $num:literal, $suffix:literal, $name:literal;)*) => {
        $($(#[$doc])* pub const $konst: u32 = $num;)*
        /// Every `kvm_api.h` call: (header macro suffix, number, name in logs). The header's
        /// macro is `EDGEVM_HYPERCALL_<suffix>`; a test checks each one against
        /// `guest/kvm_api.h`.
        pub const ALL: &[(&str, u32, &str)] = &[$(($suffix, $konst, $name)),*];
    };
}

calls! {
    /// register_func(idx, fn) — see [`crate::func`].
    REGISTER_FUNC = 0x10000, "REGISTER_FUNC", "register_func";
    /// wait_for_requests(): end of initialization; the VM is frozen here.
    WAIT_FOR_REQUESTS = 0x10001, "WAIT_FOR_REQUESTS", "wait_for_requests";
    /// wait_for_requests_paused(struct kvm_request*).
    WAIT_FOR_REQUESTS_PAUSED = 0x10002, "WAIT_PAUSED", "wait_for_requests_paused";
    /// sys_set_cacheable(cached, ttl_ms, grace_ms, keep_ms).
    SET_CACHEABLE = 0x10005, "SET_CACHEABLE", "set_cacheable";
    /// sys_backend_response(status, ctype, ctlen, content, clen, extra).
    BACKEND_RESPONSE = 0x10010, "BACKEND_RESPONSE", "backend_response";
    /// storage_return(data, len).
    STORAGE_RETURN = 0x10011, "STORAGE_RETURN", "storage_return";
    /// begin_streaming_response(status, ctype, ctlen, content_length, cb, arg).
    BEGIN_STREAMING = 0x10012, "STREAMING_RESPONSE", "begin_streaming_response";
    /// storage_noreturn(data, len).
    STORAGE_NORETURN = 0x10013, "STORAGE_NORETURN", "storage_noreturn";
    /// sys_http_append(where, str, len).
    HTTP_APPEND = 0x10020, "HTTP_APPEND", "http_append";
    /// sys_http_set(where, str, len).
    HTTP_SET = 0x10021, "HTTP_SET", "http_set";
    /// sys_http_find(where, key, klen, outb, outl).
    HTTP_FIND = 0x10022, "HTTP_FIND", "http_find";
    /// sys_http_method(outb, outl).
    HTTP_METHOD = 0x10023, "HTTP_METHOD", "http_method";
    /// sys_regex_compile(pattern, len).
    REGEX_COMPILE = 0x10030, "REGEX_COMPILE", "regex_compile";
    /// sys_regex_free(rgx).
    REGEX_FREE = 0x10031, "REGEX_FREE", "regex_free";
    /// sys_regex_match(rgx, buf, len).
    REGEX_MATCH = 0x10032, "REGEX_MATCH", "regex_match";
    /// sys_regex_subst(rgx, buf, subst, dst, dstlen, flags).
    REGEX_SUBST = 0x10033, "REGEX_SUBST", "regex_subst";
    /// sys_regex_copyto(rgx, srchp, dsthp).
    REGEX_COPYTO = 0x10035, "REGEX_COPYTO", "regex_copyto";
    /// sys_sockets_write(events, n).
    SOCKETS_WRITE = 0x10500, "SOCKETS_WRITE", "sockets_write";
    /// shared_memory_area() -> {ptr, end} in rax:rdx.
    SHARED_MEMORY_AREA = 0x10700, "SHARED_MEMORY_AREA", "shared_memory_area";
    /// sys_make_ephemeral(int).
    MAKE_EPHEMERAL = 0x10703, "MAKE_EPHEMERAL", "make_ephemeral";
    /// sys_is_storage().
    IS_STORAGE = 0x10706, "IS_STORAGE", "is_storage";
    /// sys_storage_allow(fn).
    STORAGE_ALLOW = 0x10707, "STORAGE_ALLOW", "storage_allow";
    /// storage_callv(fn, n, bufs, dst, dstlen).
    STORAGE_CALLV = 0x10708, "STORAGE_CALLV", "storage_callv";
    /// sys_storage_task(fn, data, len, start_ms, period_ms).
    STORAGE_TASK = 0x10709, "STORAGE_TASK", "storage_task";
    /// stop_storage_task(id).
    STOP_STORAGE_TASK = 0x1070A, "STOP_STORAGE_TASK", "stop_storage_task";
    /// multiprocess(n, fn, arg).
    MULTIPROCESS = 0x10710, "MULTIPROCESS", "multiprocess";
    /// multiprocess_array(n, fn, array, elsize).
    MULTIPROCESS_ARRAY = 0x10711, "MULTIPROCESS_ARRAY", "multiprocess_array";
    /// multiprocess_clone(n, stack_base, stack_size).
    MULTIPROCESS_CLONE = 0x10712, "MULTIPROCESS_CLONE", "multiprocess_clone";
    /// multiprocess_wait().
    MULTIPROCESS_WAIT = 0x10713, "MULTIPROCESS_WAIT", "multiprocess_wait";
    /// get_meminfo(struct meminfo*).
    GET_MEMINFO = 0x10A00, "GET_MEMINFO", "get_meminfo";
    /// sys_fetch(url, len, op, fields, options).
    FETCH = 0x20000, "FETCH", "fetch";
    /// sys_request (declared by the reference, never dispatched there either).
    REQUEST = 0x20001, "REQUEST", "request";
    /// sys_log(buf, len).
    LOG = 0x7F000, "LOG", "log";
    /// sys_breakpoint().
    BREAKPOINT = 0x7F7F7, "BREAKPOINT", "breakpoint";
    /// sys_is_debug().
    IS_DEBUG = 0x7FDEB, "IS_DEBUG", "is_debug";
}

/// The return trampoline: a handler returned without responding (not a `kvm_api.h` call).
pub const RETURNED: u32 = 0xFFFF;

/// Name of a call number, for logs.
pub fn name(num: u32) -> &'static str {
    if num == RETURNED {
        return "return";
    }
    ALL.iter()
        .find(|(_, n, _)| *n == num)
        .map_or("unknown", |(_, _, name)| name)
}
