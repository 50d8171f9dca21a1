/* The storage half of a two-binary program (see remote.c): linked high with
   -Wl,-Ttext-segment=0x40200000, it runs in the program's storage VM and keeps state across
   requests. Request VMs call its functions directly, as plain C calls. */
#include "kvm_api.h"

#define PAGES 16

static long visits[PAGES];
static long total;

/* Count a visit of `page`; returns how often it was visited. */
long remote_visit(long page)
{
	if (page < 0 || page >= PAGES)
		return -1;
	total++;
	return ++visits[page];
}

/* Visits of every page together. */
long remote_total(void)
{
	return total;
}

int main(void)
{
	/* Only these may be called from requests. */
	STORAGE_ALLOW(remote_visit);
	STORAGE_ALLOW(remote_total);
	wait_for_requests();
	return 0;
}
