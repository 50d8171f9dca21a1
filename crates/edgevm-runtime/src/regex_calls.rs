//! The regex calls every context serves (compile, free, match, substitute) on the VM's
//! [`Regexes`]; `sys_regex_copyto` needs header sets and is the request context's
//! (request_calls.rs). Errors give the guest -1 and the program's log a line.

use edgevm_abi::api::Call;
use edgevm_abi::linux::Output;
use edgevm_abi::regex::{self, RegexError, MAX_INPUT};
use edgevm_kvm::{MemoryView, Vcpu};

use crate::vm::Vm;

/// REGEX_SUBST_ALL: replace every match, not only the first.
const SUBST_ALL: i32 = 1;

impl<C: Vcpu, M: MemoryView> Vm<C, M> {
    /// Serve a regex call; the value for RAX.
    pub(crate) fn regex_call(&mut self, call: Call) -> u64 {
        match self.try_regex_call(call) {
            Ok(v) => v,
            Err(e) => {
                self.printer.log(&e);
                u64::MAX
            }
        }
    }

    fn try_regex_call(&mut self, call: Call) -> Result<u64, String> {
        let mem = &mut self.machine.mem;
        let read = |p: u64, l: u64| {
            if l > MAX_INPUT as u64 {
                return Err(format!("regex input of {l} bytes is too large"));
            }
            mem.read_vec(p, l as usize)
                .map_err(|e| format!("regex call: bad pointer: {e}"))
        };
        let err = |e: RegexError| e.to_string();
        Ok(match call {
            Call::RegexCompile { pattern } => {
                let p = read(pattern.addr(), pattern.len)?;
                self.regex.compile(&p).map_err(err)? as u64
            }
            Call::RegexFree { rgx } => {
                if !self.regex.free(rgx) {
                    return Err(err(RegexError::BadHandle(rgx)));
                }
                0
            }
            Call::RegexMatch { rgx, text } => {
                let t = read(text.addr(), text.len)?;
                u64::from(self.regex.is_match(rgx, &t).map_err(err)?)
            }
            Call::RegexSubst {
                rgx,
                text,
                subst,
                dst,
                flags,
            } => {
                let cstr = |p: u64| {
                    mem.read_cstr(p, MAX_INPUT)
                        .map_err(|e| format!("regex_subst: bad string: {e}"))
                };
                let (t, s) = (cstr(text.addr())?, cstr(subst.addr())?);
                let re = self.regex.get(rgx).map_err(err)?;
                let out = regex::substitute(re, &t, &s, flags & SUBST_ALL != 0).map_err(err)?;
                // The result and its NUL must fit: no partial results.
                if out.len() as u64 >= dst.len {
                    return Err(err(RegexError::TooLong {
                        need: out.len() + 1,
                        room: dst.len as usize,
                    }));
                }
                let mut z = out;
                z.push(0);
                self.machine
                    .mem
                    .write(dst.addr(), &z)
                    .map_err(|e| format!("regex_subst: bad destination: {e}"))?;
                (z.len() - 1) as u64
            }
            _ => return Err(format!("not a regex call: {}", call.num())),
        })
    }
}
