//! Every `kvm_api.h` call decoded once into a typed [`Call`]: the host's handler sets match on
//! it instead of on raw numbers and registers. Decoding only names and types the arguments;
//! checking them (pointers, lengths, what a context allows) is the handler's job.

use crate::io::Where;
use crate::nr;
use crate::types::{BackendResponseExtra, CurlFields, CurlOp, CurlOptions, GuestPtr};
use crate::types::{KvmRequest, MemInfo, VirtBuffer};
use core::ffi::c_void;

/// The six argument registers of a call: rdi, rsi, rdx, rcx, r8, r9.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Args(pub [u64; 6]);

/// A guest buffer: address and length, both as the guest passed them (unchecked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub ptr: GuestPtr<u8>,
    /// Length in bytes.
    pub len: u64,
}

impl Buf {
    fn new(ptr: u64, len: u64) -> Buf {
        Buf {
            ptr: GuestPtr::new(ptr),
            len,
        }
    }
    /// The guest address.
    pub fn addr(&self) -> u64 {
        self.ptr.addr()
    }
}

/// A guest code address (a handler, a storage function, a task).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Func(pub u64);

/// One decoded `kvm_api.h` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// register_func(index, func): index as passed (see [`crate::func`]).
    RegisterFunc { index: u64, func: Func },
    /// wait_for_requests().
    WaitForRequests,
    /// wait_for_requests_paused(req).
    WaitForRequestsPaused { req: GuestPtr<KvmRequest> },
    /// sys_set_cacheable(cached, ttl_ms, grace_ms, keep_ms).
    SetCacheable {
        cached: bool,
        ttl_ms: u64,
        grace_ms: u64,
        keep_ms: u64,
    },
    /// sys_backend_response(status, ctype, ctlen, content, clen, extra).
    BackendResponse {
        status: i16,
        ctype: Buf,
        content: Buf,
        extra: GuestPtr<BackendResponseExtra>,
    },
    /// storage_return(data, len).
    StorageReturn { data: Buf },
    /// begin_streaming_response(status, ctype, ctlen, content_length, cb, arg).
    BeginStreaming {
        status: i16,
        ctype: Buf,
        content_length: u64,
        callback: Func,
        arg: GuestPtr<c_void>,
    },
    /// storage_noreturn(data, len).
    StorageNoreturn { data: Buf },
    /// sys_http_append(where, field, len). `where_` None: not a header set (see [`Where`]).
    HttpAppend { where_: Option<Where>, field: Buf },
    /// sys_http_set(where, field, len).
    HttpSet { where_: Option<Where>, field: Buf },
    /// sys_http_find(where, key, klen, outb, outl).
    HttpFind {
        where_: Option<Where>,
        key: Buf,
        out: Buf,
    },
    /// sys_http_method(outb, outl).
    HttpMethod { out: Buf },
    /// sys_regex_compile(pattern, len).
    RegexCompile { pattern: Buf },
    /// sys_regex_free(rgx).
    RegexFree { rgx: i32 },
    /// sys_regex_match(rgx, buf, len).
    RegexMatch { rgx: i32, text: Buf },
    /// sys_regex_subst(rgx, buf, subst, dst, dstlen, flags).
    RegexSubst {
        rgx: i32,
        text: GuestPtr<u8>,
        subst: GuestPtr<u8>,
        dst: Buf,
        flags: i32,
    },
    /// sys_regex_copyto(rgx, srchp, dsthp).
    RegexCopyto {
        rgx: i32,
        from: Option<Where>,
        to: Option<Where>,
    },
    /// sys_sockets_write(events, n).
    SocketsWrite { events: GuestPtr<c_void>, n: u64 },
    /// shared_memory_area().
    SharedMemoryArea,
    /// sys_make_ephemeral(ephemeral).
    MakeEphemeral { ephemeral: bool },
    /// sys_is_storage().
    IsStorage,
    /// sys_storage_allow(func).
    StorageAllow { func: Func },
    /// storage_callv(func, n, bufs, dst, dstlen).
    StorageCallv {
        func: Func,
        n: u64,
        bufs: GuestPtr<VirtBuffer>,
        dst: Buf,
    },
    /// sys_storage_task(func, data, len, start_ms, period_ms).
    StorageTask {
        func: Func,
        data: Buf,
        start_ms: u64,
        period_ms: u64,
    },
    /// stop_storage_task(id).
    StopStorageTask { id: u64 },
    /// multiprocess(n, func, arg).
    Multiprocess {
        n: u64,
        func: Func,
        arg: GuestPtr<c_void>,
    },
    /// multiprocess_array(n, func, array, element_size).
    MultiprocessArray {
        n: u64,
        func: Func,
        array: GuestPtr<c_void>,
        element_size: u64,
    },
    /// multiprocess_clone(n, stack_base, stack_size).
    MultiprocessClone { n: u64, stack: Buf },
    /// multiprocess_wait().
    MultiprocessWait,
    /// get_meminfo(info).
    GetMeminfo { info: GuestPtr<MemInfo> },
    /// sys_fetch(url, len, op, fields, options).
    Fetch {
        url: Buf,
        op: GuestPtr<CurlOp>,
        fields: GuestPtr<CurlFields>,
        options: GuestPtr<CurlOptions>,
    },
    /// sys_request(url, len, op, fields, options).
    Request {
        url: Buf,
        op: GuestPtr<CurlOp>,
        fields: GuestPtr<CurlFields>,
        options: GuestPtr<CurlOptions>,
    },
    /// sys_log(buf, len).
    Log { buf: Buf },
    /// sys_breakpoint().
    Breakpoint,
    /// sys_is_debug().
    IsDebug,
    /// The return trampoline: a handler returned without responding.
    Returned,
}

/// A number that is no `kvm_api.h` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadCall {
    /// The number in eax.
    pub num: u32,
}

/// A C `int` argument (the low 32 bits of its register).
fn int(v: u64) -> i32 {
    v as u32 as i32
}

/// A pointer argument.
fn p<T>(v: u64) -> GuestPtr<T> {
    GuestPtr::new(v)
}

/// A C `int16_t` argument.
fn short(v: u64) -> i16 {
    v as u16 as i16
}

impl Call {
    /// Decode call `num` with argument registers `a`.
    pub fn decode(num: u32, a: &Args) -> Result<Call, BadCall> {
        Self::decode_request(num, a)
            .or_else(|| Self::decode_host(num, a))
            .ok_or(BadCall { num })
    }

    /// The lifecycle, response, header and regex calls (0x10000..0x10035).
    fn decode_request(num: u32, a: &Args) -> Option<Call> {
        let [a0, a1, a2, a3, a4, a5] = a.0;
        Some(match num {
            nr::REGISTER_FUNC => Call::RegisterFunc {
                index: a0,
                func: Func(a1),
            },
            nr::WAIT_FOR_REQUESTS => Call::WaitForRequests,
            nr::WAIT_FOR_REQUESTS_PAUSED => Call::WaitForRequestsPaused { req: p(a0) },
            nr::SET_CACHEABLE => Call::SetCacheable {
                cached: a0 != 0,
                ttl_ms: a1,
                grace_ms: a2,
                keep_ms: a3,
            },
            nr::BACKEND_RESPONSE => Call::BackendResponse {
                status: short(a0),
                ctype: Buf::new(a1, a2),
                content: Buf::new(a3, a4),
                extra: p(a5),
            },
            nr::STORAGE_RETURN => Call::StorageReturn {
                data: Buf::new(a0, a1),
            },
            nr::BEGIN_STREAMING => Call::BeginStreaming {
                status: short(a0),
                ctype: Buf::new(a1, a2),
                content_length: a3,
                callback: Func(a4),
                arg: p(a5),
            },
            nr::STORAGE_NORETURN => Call::StorageNoreturn {
                data: Buf::new(a0, a1),
            },
            nr::HTTP_APPEND => Call::HttpAppend {
                where_: Where::from_arg(a0),
                field: Buf::new(a1, a2),
            },
            nr::HTTP_SET => Call::HttpSet {
                where_: Where::from_arg(a0),
                field: Buf::new(a1, a2),
            },
            nr::HTTP_FIND => Call::HttpFind {
                where_: Where::from_arg(a0),
                key: Buf::new(a1, a2),
                out: Buf::new(a3, a4),
            },
            nr::HTTP_METHOD => Call::HttpMethod {
                out: Buf::new(a0, a1),
            },
            nr::REGEX_COMPILE => Call::RegexCompile {
                pattern: Buf::new(a0, a1),
            },
            nr::REGEX_FREE => Call::RegexFree { rgx: int(a0) },
            nr::REGEX_MATCH => Call::RegexMatch {
                rgx: int(a0),
                text: Buf::new(a1, a2),
            },
            nr::REGEX_SUBST => Call::RegexSubst {
                rgx: int(a0),
                text: p(a1),
                subst: p(a2),
                dst: Buf::new(a3, a4),
                flags: int(a5),
            },
            nr::REGEX_COPYTO => Call::RegexCopyto {
                rgx: int(a0),
                from: Where::from_arg(a1),
                to: Where::from_arg(a2),
            },
            _ => return None,
        })
    }

    /// The other calls: shared memory, storage, multiprocessing, fetch, logging, debugging.
    fn decode_host(num: u32, a: &Args) -> Option<Call> {
        let [a0, a1, a2, a3, a4, _] = a.0;
        Some(match num {
            nr::SOCKETS_WRITE => Call::SocketsWrite {
                events: p(a0),
                n: a1,
            },
            nr::SHARED_MEMORY_AREA => Call::SharedMemoryArea,
            nr::MAKE_EPHEMERAL => Call::MakeEphemeral {
                ephemeral: int(a0) != 0,
            },
            nr::IS_STORAGE => Call::IsStorage,
            nr::STORAGE_ALLOW => Call::StorageAllow { func: Func(a0) },
            nr::STORAGE_CALLV => Call::StorageCallv {
                func: Func(a0),
                n: a1,
                bufs: p(a2),
                dst: Buf::new(a3, a4),
            },
            nr::STORAGE_TASK => Call::StorageTask {
                func: Func(a0),
                data: Buf::new(a1, a2),
                start_ms: a3,
                period_ms: a4,
            },
            nr::STOP_STORAGE_TASK => Call::StopStorageTask { id: a0 },
            nr::MULTIPROCESS => Call::Multiprocess {
                n: a0,
                func: Func(a1),
                arg: p(a2),
            },
            nr::MULTIPROCESS_ARRAY => Call::MultiprocessArray {
                n: a0,
                func: Func(a1),
                array: p(a2),
                element_size: a3,
            },
            nr::MULTIPROCESS_CLONE => Call::MultiprocessClone {
                n: a0,
                stack: Buf::new(a1, a2),
            },
            nr::MULTIPROCESS_WAIT => Call::MultiprocessWait,
            nr::GET_MEMINFO => Call::GetMeminfo { info: p(a0) },
            nr::FETCH | nr::REQUEST => {
                let (url, op, fields, options) = (Buf::new(a0, a1), p(a2), p(a3), p(a4));
                if num == nr::FETCH {
                    Call::Fetch {
                        url,
                        op,
                        fields,
                        options,
                    }
                } else {
                    Call::Request {
                        url,
                        op,
                        fields,
                        options,
                    }
                }
            }
            nr::LOG => Call::Log {
                buf: Buf::new(a0, a1),
            },
            nr::BREAKPOINT => Call::Breakpoint,
            nr::IS_DEBUG => Call::IsDebug,
            nr::RETURNED => Call::Returned,
            _ => return None,
        })
    }

    /// The call's number (the inverse of [`Call::decode`]).
    pub fn num(&self) -> u32 {
        match self {
            Call::RegisterFunc { .. } => nr::REGISTER_FUNC,
            Call::WaitForRequests => nr::WAIT_FOR_REQUESTS,
            Call::WaitForRequestsPaused { .. } => nr::WAIT_FOR_REQUESTS_PAUSED,
            Call::SetCacheable { .. } => nr::SET_CACHEABLE,
            Call::BackendResponse { .. } => nr::BACKEND_RESPONSE,
            Call::StorageReturn { .. } => nr::STORAGE_RETURN,
            Call::BeginStreaming { .. } => nr::BEGIN_STREAMING,
            Call::StorageNoreturn { .. } => nr::STORAGE_NORETURN,
            Call::HttpAppend { .. } => nr::HTTP_APPEND,
            Call::HttpSet { .. } => nr::HTTP_SET,
            Call::HttpFind { .. } => nr::HTTP_FIND,
            Call::HttpMethod { .. } => nr::HTTP_METHOD,
            Call::RegexCompile { .. } => nr::REGEX_COMPILE,
            Call::RegexFree { .. } => nr::REGEX_FREE,
            Call::RegexMatch { .. } => nr::REGEX_MATCH,
            Call::RegexSubst { .. } => nr::REGEX_SUBST,
            Call::RegexCopyto { .. } => nr::REGEX_COPYTO,
            Call::SocketsWrite { .. } => nr::SOCKETS_WRITE,
            Call::SharedMemoryArea => nr::SHARED_MEMORY_AREA,
            Call::MakeEphemeral { .. } => nr::MAKE_EPHEMERAL,
            Call::IsStorage => nr::IS_STORAGE,
            Call::StorageAllow { .. } => nr::STORAGE_ALLOW,
            Call::StorageCallv { .. } => nr::STORAGE_CALLV,
            Call::StorageTask { .. } => nr::STORAGE_TASK,
            Call::StopStorageTask { .. } => nr::STOP_STORAGE_TASK,
            Call::Multiprocess { .. } => nr::MULTIPROCESS,
            Call::MultiprocessArray { .. } => nr::MULTIPROCESS_ARRAY,
            Call::MultiprocessClone { .. } => nr::MULTIPROCESS_CLONE,
            Call::MultiprocessWait => nr::MULTIPROCESS_WAIT,
            Call::GetMeminfo { .. } => nr::GET_MEMINFO,
            Call::Fetch { .. } => nr::FETCH,
            Call::Request { .. } => nr::REQUEST,
            Call::Log { .. } => nr::LOG,
            Call::Breakpoint => nr::BREAKPOINT,
            Call::IsDebug => nr::IS_DEBUG,
            Call::Returned => nr::RETURNED,
        }
    }

    /// The call's name, for logs.
    pub fn name(&self) -> &'static str {
        nr::name(self.num())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_number_decodes_to_its_own_call() {
        let a = Args([1, 2, 3, 4, 5, 6]);
        for &(_, num, name) in nr::ALL {
            let c = Call::decode(num, &a).unwrap();
            assert_eq!(c.num(), num);
            assert_eq!(c.name(), name);
        }
        assert_eq!(Call::decode(nr::RETURNED, &a), Ok(Call::Returned));
        assert_eq!(Call::decode(0x10004, &a), Err(BadCall { num: 0x10004 }));
        assert_eq!(Call::decode(0, &a), Err(BadCall { num: 0 }));
    }

    #[test]
    fn where_is_a_c_int_req_or_bereq_resp_or_beresp() {
        for (v, w) in [
            (0u64, Some(Where::Req)),
            (4, Some(Where::Req)),
            (1, Some(Where::Resp)),
            (5, Some(Where::Resp)),
            (2, None),
            (3, None),
            (6, None),
            (u64::MAX, None),
            (0xdead_0000_0001, Some(Where::Resp)),
            (0xdead_0000_0004, Some(Where::Req)),
            (0xdead_0000_0000, Some(Where::Req)),
        ] {
            let c = Call::decode(nr::HTTP_SET, &Args([v, 0x1000, 9, 0, 0, 0])).unwrap();
            assert_eq!(
                c,
                Call::HttpSet {
                    where_: w,
                    field: Buf::new(0x1000, 9)
                },
                "{v:#x}"
            );
        }
    }

    #[test]
    fn arguments_land_in_their_fields() {
        let a = Args([0xffff_ffff_ffff_01f4, 0x1000, 10, 0x2000, 20, 0x3000]);
        assert_eq!(
            Call::decode(nr::BACKEND_RESPONSE, &a),
            Ok(Call::BackendResponse {
                status: 500,
                ctype: Buf::new(0x1000, 10),
                content: Buf::new(0x2000, 20),
                extra: GuestPtr::new(0x3000),
            })
        );
        let a = Args([0x40_0000, 3, 0x5000, 0x6000, 64, 0]);
        assert_eq!(
            Call::decode(nr::STORAGE_CALLV, &a),
            Ok(Call::StorageCallv {
                func: Func(0x40_0000),
                n: 3,
                bufs: GuestPtr::new(0x5000),
                dst: Buf::new(0x6000, 64),
            })
        );
    }
}
