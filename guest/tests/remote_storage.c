/* remote_storage.c: the storage program of a remote-call pair, linked high
   (-Wl,-Ttext-segment=0x40200000): remote_request.c calls these functions as plain C calls
   (it links with --just-symbols of this binary's rs_* symbols), and each call runs here, in
   the storage VM (tests/all/remote.rs). */
#include "kvm_api.h"
#include <stdlib.h>
#include <time.h>

struct rs_pair {
	long a, b;
};

static long total;
static long calls;
static int inside;

/* Scalar arguments and result; the total stays in storage across requests. */
long rs_add(long a, long b)
{
	calls++;
	total += a + b;
	return total;
}

long rs_total(void)
{
	return total;
}

/* All six argument registers. */
long rs_args6(long a, long b, long c, long d, long e, long f)
{
	return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
}

/* A 16-byte struct comes back in RAX:RDX. */
struct rs_pair rs_pair(long x)
{
	return (struct rs_pair){x + 1, x * 2};
}

/* Recursion inside the storage program. */
__attribute__((noinline)) long rs_fib(long n)
{
	return n < 2 ? n : rs_fib(n - 1) + rs_fib(n - 2);
}

static long rs_inc(long x)
{
	return x + 1;
}

/* Calls a function pointer: one of storage's (rs_inc_ptr) works; a request program's
   address means nothing here. */
long rs_apply(long (*f)(long), long x)
{
	return f(x);
}

long (*rs_inc_ptr(void))(long)
{
	return rs_inc;
}

static long spin_ms(long ms)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
	return ms;
}

/* Serialized: no other call may be inside while this one spins. -1 if one was. */
long rs_critical(long ms)
{
	if (inside)
		return -1;
	inside = 1;
	spin_ms(ms);
	inside = 0;
	return ++calls;
}

long rs_spin(long ms)
{
	return spin_ms(ms);
}

static volatile unsigned long nowhere = 16;

long rs_crash(void)
{
	*(volatile long *)nowhere = 1;
	return 0;
}

long rs_loop(void)
{
	for (;;)
		__asm__ volatile("");
}

long rs_exit(void)
{
	exit(3);
}

/* Not in STORAGE_ALLOW. */
long rs_forbidden(void)
{
	return 666;
}

static void inner(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n;
	(void)buf;
	(void)res;
	storage_return("x", 1);
}

/* A storage function cannot storage_call() (deadlock guard: -1), and storage_return() means
   nothing in a remote call (ignored: the function goes on). */
long rs_nested(void)
{
	long r = storage_call(inner, NULL, 0, NULL, 0);
	storage_return("y", 1);
	return r * 10 + 7;
}

/* For storage_call() from the request program: the same counter. */
void rs_count_callv(size_t n, struct virtbuffer buf[n], size_t res)
{
	(void)n;
	(void)buf;
	(void)res;
	calls++;
	total += 1;
	storage_return(&total, sizeof(total));
}

int main(void)
{
	STORAGE_ALLOW(rs_add);
	STORAGE_ALLOW(rs_total);
	STORAGE_ALLOW(rs_args6);
	STORAGE_ALLOW(rs_pair);
	STORAGE_ALLOW(rs_fib);
	STORAGE_ALLOW(rs_apply);
	STORAGE_ALLOW(rs_inc_ptr);
	STORAGE_ALLOW(rs_critical);
	STORAGE_ALLOW(rs_spin);
	STORAGE_ALLOW(rs_crash);
	STORAGE_ALLOW(rs_loop);
	STORAGE_ALLOW(rs_exit);
	STORAGE_ALLOW(rs_nested);
	STORAGE_ALLOW(rs_count_callv);
	wait_for_requests();
	return 0;
}
