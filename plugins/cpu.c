/*
 * cpu.c - the `cpu` plugin: the CPU-bound workload the thread/process
 * comparison and `jobrund --bench` are about.  Input n (0..2^32); output
 * the exact sum of i*i for 0 <= i < n, as Python's
 * sum(i*i for i in range(n)) prints it.
 *
 * It really loops, once per i: the point is to burn CPU, not to know the
 * closed form.  Each i*i fits in 64 bits (i < 2^32); the sum is kept in
 * 128 bits, so it never overflows.  The loop asks host->task_cancelled
 * every 2^20 iterations (about a millisecond).  No state: thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jobrund/plugin.h"
#include "decimal.h"

#define CPU_MAX_N       4294967296ULL   /* so that i*i fits in 64 bits */
#define CPU_CHUNK       (1ULL << 20)    /* iterations between cancel checks */

/* Parse a whole unsigned decimal: digits only, no sign, no exponent. */
static int
parse_n(const char *s, uint64_t *v)
{
	char *end;
	unsigned long long x;

	if (*s < '0' || *s > '9')
		return EINVAL;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (*end != '\0')
		return EINVAL;
	if (errno == ERANGE || x > CPU_MAX_N)
		return ERANGE;
	*v = x;
	return 0;
}

static int
cpu_run(const struct jr_host *host, void *state, jr_task *task)
{
	const char *in = host->task_input(task);
	unsigned __int128 sum = 0;
	uint64_t n, i, stop;
	char buf[48];
	int r;

	if (in == NULL) {
		host->task_error(task, "cpu needs an input: n, from 0 to %llu",
		    CPU_MAX_N);
		return EINVAL;
	}
	if ((r = parse_n(in, &n)) != 0) {
		host->task_error(task, "cpu: input \"%.64s\" is %s: expected an "
		    "integer n from 0 to %llu", in,
		    r == ERANGE ? "out of range" : "not a non-negative integer",
		    CPU_MAX_N);
		return EINVAL;
	}

	for (i = 0; i < n; ) {
		stop = n - i > CPU_CHUNK ? i + CPU_CHUNK : n;
		for (; i < stop; i++) {
			/* Hide i from the optimiser, which could otherwise
			 * replace the loop by its closed form. */
			__asm__ volatile("" : "+r"(i));
			sum += (unsigned __int128)(i * i);
		}
		if (i < n && host->task_cancelled(task)) {
			host->task_error(task, "cancelled after %llu of %llu "
			    "iterations", (unsigned long long)i,
			    (unsigned long long)n);
			return ECANCELED;
		}
	}
	return host->task_printf(task, "%s", u128_to_dec(sum, buf,
	    sizeof buf)) == 0 ? 0 : EFBIG;
}

JR_PLUGIN_DEFINE(
	.name = "cpu",
	.version = "1.0",
	.description = "sum of i*i for i < n: a CPU-bound loop",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.run = cpu_run,
);
