/*
 * sleep.c - the `sleep` plugin: the I/O-bound (waiting) workload.  Input
 * seconds, a decimal from 0 to 86400 ("0.05", "2"); it sleeps that long in
 * slices of at most 5 ms, so it stops within a few milliseconds of being
 * cancelled (by an administrator, by shutdown or by its timeout).  Output:
 * the seconds slept ("%.9g" of the input).  No state: thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobrund/plugin.h"

#define SLEEP_MAX_S     86400.0
#define SLEEP_SLICE_S   0.005

/* Parse a plain decimal: digits with an optional fraction; no sign, no
 * exponent, no "inf" or "nan" (strtod alone takes all of those). */
static int
parse_seconds(const char *s, double *v)
{
	const char *p = s;
	int digits = 0;
	char *end;

	while (*p >= '0' && *p <= '9')
		p++, digits++;
	if (*p == '.')
		for (p++; *p >= '0' && *p <= '9'; p++)
			digits++;
	if (digits == 0 || *p != '\0')
		return EINVAL;
	errno = 0;
	*v = strtod(s, &end);
	if (*end != '\0' || errno == ERANGE || *v > SLEEP_MAX_S)
		return ERANGE;
	return 0;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
sleep_run(const struct jr_host *host, void *state, jr_task *task)
{
	const char *in = host->task_input(task);
	double secs, start, left, slice;
	struct timespec ts;
	int r;

	if (in == NULL) {
		host->task_error(task, "sleep needs an input: seconds");
		return EINVAL;
	}
	if ((r = parse_seconds(in, &secs)) != 0) {
		host->task_error(task, "sleep: input \"%.64s\" is %s: expected "
		    "seconds from 0 to %.0f, e.g. \"0.05\"", in,
		    r == ERANGE ? "out of range" : "not a number of seconds",
		    SLEEP_MAX_S);
		return EINVAL;
	}

	start = now_s();
	for (;;) {
		if (host->task_cancelled(task)) {
			host->task_error(task, "cancelled after %.2fs",
			    now_s() - start);
			return ECANCELED;
		}
		left = secs - (now_s() - start);
		if (left <= 0)
			break;
		slice = left < SLEEP_SLICE_S ? left : SLEEP_SLICE_S;
		ts.tv_sec = 0;
		ts.tv_nsec = (long)(slice * 1e9);
		nanosleep(&ts, NULL);
	}
	return host->task_printf(task, "%.9g", secs) == 0 ? 0 : EFBIG;
}

JR_PLUGIN_DEFINE(
	.name = "sleep",
	.version = "1.0",
	.description = "sleep for the input's seconds, promptly cancellable",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.run = sleep_run,
);
