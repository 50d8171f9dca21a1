// kvm_api calls: `out %eax,$0` with the call number in EAX and the arguments in the System V
// registers (RDI, RSI, RDX, RCX, R8, R9), as guest/kvm_api.h's stubs make them.

#include "textflag.h"

// func hypercall(num, a0, a1, a2, a3, a4, a5 uintptr) uintptr
TEXT ·hypercall(SB), NOSPLIT, $0-64
	MOVQ num+0(FP), AX
	MOVQ a0+8(FP), DI
	MOVQ a1+16(FP), SI
	MOVQ a2+24(FP), DX
	MOVQ a3+32(FP), CX
	MOVQ a4+40(FP), R8
	MOVQ a5+48(FP), R9
	BYTE $0xE7; BYTE $0x00 // out %eax,$0
	MOVQ AX, ret+56(FP)
	RET

// func waitPaused(req uintptr)
//
// The host resumes a paused program through a trampoline that runs on up to 1 KiB below the
// paused stack pointer, and a goroutine stack may have less room than that: the call is made
// from the top of a 4 KiB frame of this function (the prologue grows the stack for it).
TEXT ·waitPaused(SB), $4096-8
	MOVQ req+0(FP), DI
	ADDQ $2048, SP
	MOVL $0x10002, AX
	BYTE $0xE7; BYTE $0x00 // out %eax,$0
	SUBQ $2048, SP
	RET
