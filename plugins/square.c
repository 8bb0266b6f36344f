/*
 * square.c - the `square` plugin: the smallest useful workload.  Each
 * task's input is a 64-bit integer x; the output is x*x in decimal, exact
 * for every int64 (the square needs up to 127 bits, so it is computed and
 * printed as __int128).  No settings, no state: thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "jobrund/plugin.h"
#include "decimal.h"

/* Parse a whole decimal int64: optional sign, digits, nothing else.  By
 * hand: strtoll's locale and base handling cost as much as the square. */
static int
parse_int64(const char *s, int64_t *v)
{
	const char *p = s;
	bool neg = false;
	uint64_t x = 0;

	if (*p == '+' || *p == '-')
		neg = *p++ == '-';
	if (*p < '0' || *p > '9')
		return EINVAL;
	/* |INT64_MIN| = INT64_MAX + 1 */
	uint64_t max = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	bool over = false;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');
		if (x > (max - d) / 10)
			over = true;    /* keep reading: junk after is EINVAL */
		else
			x = x * 10 + d;
	}
	if (*p != '\0')
		return EINVAL;
	if (over)
		return ERANGE;
	*v = neg ? (int64_t)(0 - x) : (int64_t)x;
	return 0;
}

static int
square_run(const struct jr_host *host, void *state, jr_task *task)
{
	const char *in = host->task_input(task);
	char buf[48];
	int64_t x;
	int r;

	if (in == NULL) {
		host->task_error(task, "square needs an input: an integer");
		return EINVAL;
	}
	if ((r = parse_int64(in, &x)) != 0) {
		host->task_error(task, "square: input \"%.64s\" is %s: expected "
		    "an integer from -9223372036854775808 to "
		    "9223372036854775807", in,
		    r == ERANGE ? "out of range" : "not an integer");
		return EINVAL;
	}
	/* |x| fits in 64 unsigned bits, its square in 128. */
	unsigned __int128 m = x < 0 ? (unsigned __int128)-(__int128)x :
	    (unsigned __int128)x;
	const char *dec = u128_to_dec(m * m, buf, sizeof buf);

	return host->task_output(task, dec, strlen(dec)) == 0 ? 0 : EFBIG;
}

JR_PLUGIN_DEFINE(
	.name = "square",
	.version = "1.0",
	.description = "the square of each integer input, exactly",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.run = square_run,
);
