/* debug.c: a program to debug with GDB (tests/all/debug.rs). Built with -O0 so every
   variable and line is where GDB expects it.
   main():  calls compute() (a breakpoint by name), sys_breakpoint() with the environment
            variable BOOT_BREAK=1, then waits for requests.
   GET /bp      sys_breakpoint() in the request, then answers "bp <counter>".
   GET /crash   writes through a NULL pointer in crash_here().
   GET /int3    executes the program's own int3.
   GET /spin    sys_breakpoint(), then spins until a debugger sets stop_spin.
   GET anything else: "ok <counter>". */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int counter = 41;
volatile int *null_ptr;
volatile int stop_spin;

__attribute__((noinline)) void spin_wait(void)
{
	while (!stop_spin) {
	}
}

__attribute__((noinline)) int compute(int a, int b)
{
	int sum = a + b;
	counter += sum;
	return counter;
}

__attribute__((noinline)) void crash_here(int v)
{
	*null_ptr = v;
}

static void respond(const char *what)
{
	char buf[64];
	snprintf(buf, sizeof(buf), "%s %d\n", what, counter);
	backend_response_str(200, "text/plain", buf);
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	if (strstr(url, "/bp")) {
		sys_breakpoint();
		counter += 1;
		respond("bp");
	} else if (strstr(url, "/spin")) {
		sys_breakpoint();
		spin_wait();
		respond("spun");
	} else if (strstr(url, "/crash")) {
		crash_here(7);
		respond("survived");
	} else if (strstr(url, "/int3")) {
		__asm__ volatile("int3");
		respond("after int3");
	} else {
		respond("ok");
	}
}

int main(void)
{
	int result = compute(1, 2);
	printf("compute: %d\n", result);
	fflush(stdout);
	const char *b = getenv("BOOT_BREAK");
	if (b && *b == '1')
		sys_breakpoint();
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
