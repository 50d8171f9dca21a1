/* remote_request.c: the request program of a remote-call pair (tests/all/remote.rs). It is
   linked with --just-symbols of remote_storage's rs_* symbols, so rs_add() etc. are plain C
   calls to addresses above 1 GiB that run in the storage VM.
   The action is the second path segment: /<program>/<action>?<query>.

     addr           the address of rs_add (hex)
     add?a=A&b=B    rs_add(A, B): "total=<T>"
     total          rs_total(): "total=<T>"
     args6          rs_args6(1, 2, 3, 4, 5, 6): "r=91"
     pair?x=X       rs_pair(X) (a struct in RAX:RDX): "a=<X+1> b=<2X>"
     fib?n=N        rs_fib(N), recursive in storage: "fib=<F>"
     apply          rs_apply(rs_inc_ptr(), 41) (a storage pointer called in storage): "r=42"
     applyreq       rs_apply(<a request function>, 1): fails (no such code in storage)
     critical?ms=M  rs_critical(M): "r=<n>" (-1 if two calls overlapped)
     spin?ms=M      rs_spin(M): "r=M"
     crash, loop, exit, forbidden   the storage function crashes, loops, exits, is not allowed
     nested         rs_nested(): "r=-3"
     jump?addr=A    calls address A (hex) as long f(void): "r=<ret>"
     badstack       jumps to rs_total with RSP pointing at no program memory
     callv          storage_call(rs_count_callv): "total=<T>"
     many?n=N       N calls of rs_add(1, 0): "total=<T>"
     manycallv?n=N  N storage_call()s of rs_count_callv: "total=<T>" */
#include "test_util.h"
#include <stdio.h>
#include <stdlib.h>

struct rs_pair {
	long a, b;
};

extern long rs_add(long a, long b);
extern long rs_total(void);
extern long rs_args6(long a, long b, long c, long d, long e, long f);
extern struct rs_pair rs_pair(long x);
extern long rs_fib(long n);
extern long rs_apply(long (*f)(long), long x);
extern long (*rs_inc_ptr(void))(long);
extern long rs_critical(long ms);
extern long rs_spin(long ms);
extern long rs_crash(void);
extern long rs_loop(void);
extern long rs_exit(void);
extern long rs_forbidden(void);
extern long rs_nested(void);
extern void rs_count_callv(size_t n, struct virtbuffer buf[n], size_t res);

static long num(const char *url, const char *key, long dflt)
{
	const char *v = query_param(url, key);
	return v != NULL ? strtol(v, NULL, 0) : dflt;
}

static long twice(long x)
{
	return 2 * x;
}

static char out[256];

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char act[32];
	action_of(url, act, sizeof(act));
	if (strcmp(act, "addr") == 0) {
		snprintf(out, sizeof(out), "%#lx", (unsigned long)rs_add);
	} else if (strcmp(act, "add") == 0) {
		snprintf(out, sizeof(out), "total=%ld", rs_add(num(url, "a", 0), num(url, "b", 0)));
	} else if (strcmp(act, "total") == 0) {
		snprintf(out, sizeof(out), "total=%ld", rs_total());
	} else if (strcmp(act, "args6") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_args6(1, 2, 3, 4, 5, 6));
	} else if (strcmp(act, "pair") == 0) {
		struct rs_pair p = rs_pair(num(url, "x", 0));
		snprintf(out, sizeof(out), "a=%ld b=%ld", p.a, p.b);
	} else if (strcmp(act, "fib") == 0) {
		snprintf(out, sizeof(out), "fib=%ld", rs_fib(num(url, "n", 10)));
	} else if (strcmp(act, "apply") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_apply(rs_inc_ptr(), 41));
	} else if (strcmp(act, "applyreq") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_apply(twice, 1));
	} else if (strcmp(act, "critical") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_critical(num(url, "ms", 1)));
	} else if (strcmp(act, "spin") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_spin(num(url, "ms", 1)));
	} else if (strcmp(act, "crash") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_crash());
	} else if (strcmp(act, "loop") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_loop());
	} else if (strcmp(act, "exit") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_exit());
	} else if (strcmp(act, "forbidden") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_forbidden());
	} else if (strcmp(act, "nested") == 0) {
		snprintf(out, sizeof(out), "r=%ld", rs_nested());
	} else if (strcmp(act, "jump") == 0) {
		long (*f)(void) = (long (*)(void))(unsigned long)num(url, "addr", 0);
		snprintf(out, sizeof(out), "r=%ld", f());
	} else if (strcmp(act, "badstack") == 0) {
		long r;
		/* A jump into storage with RSP where no program memory is: there is no return
		   address to read (the request fails). */
		__asm__ volatile("mov %%rsp, %%rbx\n\t"
				 "mov $0x10, %%rsp\n\t"
				 "jmp *%1\n\t"
				 "mov %%rbx, %%rsp"
				 : "=a"(r)
				 : "r"(rs_total)
				 : "rbx", "memory");
		snprintf(out, sizeof(out), "r=%ld", r);
	} else if (strcmp(act, "callv") == 0) {
		long t = 0;
		storage_call(rs_count_callv, NULL, 0, &t, sizeof(t));
		snprintf(out, sizeof(out), "total=%ld", t);
	} else if (strcmp(act, "many") == 0) {
		long n = num(url, "n", 1), t = 0;
		for (long i = 0; i < n; i++)
			t = rs_add(1, 0);
		snprintf(out, sizeof(out), "total=%ld", t);
	} else if (strcmp(act, "manycallv") == 0) {
		long n = num(url, "n", 1), t = 0;
		for (long i = 0; i < n; i++)
			storage_call(rs_count_callv, NULL, 0, &t, sizeof(t));
		snprintf(out, sizeof(out), "total=%ld", t);
	} else {
		respond(404, "no such action\n");
		return;
	}
	respond(200, out);
}

int main(void)
{
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
