//! Fuzz target `elf`: the ELF loader and the initial stack.

use edgevm_abi::cpu::write_system_tables;
use edgevm_abi::elf::{load, setup_stack};
use edgevm_abi::layout::{Layout, USER_BASE};
use edgevm_kvm::GuestMemory;

use crate::input::Input;

/// Guest memory of the fuzzed programs (the smallest size the layout allows, rounded up).
const MEM: u64 = 32 << 20;

/// Load the input as a program into fresh guest memory, the way `MainVm::load` does (system
/// tables, protected ranges, then the ELF), build its stack, and check that nothing below
/// user memory changed (GDT, TSS, IDT, stubs, page tables) and that the reported image lies in user memory.
///
/// The first byte chooses how many of the trailing bytes become argv/envp strings (0 = none),
/// so mutations of the ELF itself are not disturbed.
pub fn elf(data: &[u8]) {
    let Some((&argc, rest)) = data.split_first() else {
        return;
    };
    let (bytes, args) = if argc == 0 {
        (rest, &[][..])
    } else {
        rest.split_at(rest.len().saturating_sub(argc as usize))
    };
    let layout = Layout::new(MEM, 0).expect("layout");
    let mut mem = GuestMemory::new_shared(MEM as usize).expect("guest memory");
    write_system_tables(&mut mem, &layout, false).expect("system tables");
    mem.set_protected(layout.protected().to_vec());
    let low = crate::supervisor_bytes(&mem, &layout);

    if let Ok(elf) = load(bytes, &mut mem, &layout) {
        assert!(
            elf.end >= USER_BASE && elf.end <= layout.input_area,
            "{elf:?}"
        );
        assert!(elf.image_bytes <= elf.end - USER_BASE, "{elf:?}");
        assert_eq!(elf.end % 4096, 0);
        let mut inp = Input::new(args);
        let mut argv = vec!["fuzz".to_string()];
        let mut envp = Vec::new();
        while !inp.is_empty() {
            let s = inp.string(64);
            if inp.bool() {
                argv.push(s);
            } else {
                envp.push(s);
            }
        }
        if let Ok(rsp) = setup_stack(&mut mem, &layout, &elf, &argv, &envp, [7; 16], None) {
            assert!(
                rsp > layout.stack_bottom && rsp < layout.stack_top && rsp % 16 == 0,
                "rsp {rsp:#x}"
            );
        }
        let _ = elf.symbols.lookup(elf.entry);
    }
    assert!(
        low == crate::supervisor_bytes(&mem, &layout),
        "loading a program changed supervisor memory"
    );
}
