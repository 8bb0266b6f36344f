/*
 * notsafe.c - a test plugin without JR_PLUGIN_THREAD_SAFE: jobrund must
 * refuse it in thread mode with more than one worker (or serialise it, as
 * config.c decides) and run it happily in process mode.  Each task echoes
 * its input.
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "jobrund/plugin.h"

static int
notsafe_run(const struct jr_host *host, void *state, jr_task *task)
{
	const char *in = host->task_input(task);

	if (in == NULL)
		return 0;
	return host->task_output(task, in, strlen(in)) == 0 ? 0 : EFBIG;
}

JR_PLUGIN_DEFINE(
	.name = "notsafe",
	.version = "1.0",
	.description = "echoes its input; not thread-safe",
	.run = notsafe_run,
);
