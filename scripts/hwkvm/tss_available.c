/* tss_available.c: LD_PRELOAD shim for the hardware-KVM harness only (scripts/hwkvm.sh).

   QEMU's software I/O-permission check (TCG) accepts only a TSS descriptor whose cached type is
   9 (available); edgevm loads type 11 (busy), which real CPUs accept and VMX entry requires.
   Under QEMU every CPL3 `out` (each kvm_api call) would then raise #GP. This shim rewrites the
   TR type from 11 to 9 on its way into KVM_SET_SREGS, inside the emulated machine only; edgevm
   itself keeps type 11. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <linux/kvm.h>

int ioctl(int fd, unsigned long request, ...)
{
	static int (*real)(int, unsigned long, ...);
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (!real)
		real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
	if (request == KVM_SET_SREGS && arg) {
		struct kvm_sregs *s = arg;
		if (s->tr.type == 11)
			s->tr.type = 9;
	}
	return real(fd, request, arg);
}
