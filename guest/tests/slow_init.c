/* slow_init.c: a program whose main() takes a while, like a runtime that loads and compiles
   its scripts at start (the snapshot benchmark, tests/all/snapshot.rs): it sieves primes below
   1,000,000 over and over until SLOW_INIT_MS (environment, default 60) milliseconds have
   passed, then keeps the table and the number of rounds. Every GET answers
   "primes=N rounds=R" from what main() computed; /slow_init/N answers whether N is prime. */
#include "kvm_api.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LIMIT 1000000
static unsigned char composite[LIMIT];
static int primes, rounds;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int sieve(void)
{
	memset(composite, 0, sizeof(composite));
	int n = 0;
	for (long i = 2; i < LIMIT; i++) {
		if (composite[i])
			continue;
		n++;
		for (long j = i * i; j < LIMIT; j += i)
			composite[j] = 1;
	}
	return n;
}

static void on_get(const char *url, const char *arg)
{
	(void)arg;
	char out[96];
	const char *last = strrchr(url, '/');
	long n = last ? atol(last + 1) : 0;
	if (n >= 2 && n < LIMIT)
		snprintf(out, sizeof(out), "%ld prime=%d", n, !composite[n]);
	else
		snprintf(out, sizeof(out), "primes=%d rounds=%d", primes, rounds);
	backend_response_str(200, "text/plain", out);
}

int main(void)
{
	const char *ms = getenv("SLOW_INIT_MS");
	const double budget = ms ? atof(ms) : 60;
	const double t0 = now_ms();
	do {
		primes = sieve();
		rounds++;
	} while (now_ms() - t0 < budget);
	set_backend_get(on_get);
	wait_for_requests();
	return 0;
}
