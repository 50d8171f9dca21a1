/* interp.c: a plain dynamically linked program, built with different PT_INTERP values
   (guest/build.sh): dynamic_musl (musl's loader, /lib/ld-musl-x86_64.so.1) and bad_interp
   (PT_INTERP /etc/passwd, which edgevm must refuse: it is not a dynamic loader). */
#include <stdio.h>

int main(int argc, char **argv)
{
	(void)argc;
	printf("interp ok: %s\n", argv[0]);
	return 0;
}
