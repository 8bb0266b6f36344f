/*
 * badabi.c - a test plugin built for an ABI that does not exist (99.0):
 * the loader must refuse it before calling anything.  The descriptor is
 * written out by hand, since JR_PLUGIN_DEFINE would fill in the real ABI.
 */
#include "config.h"

#include <errno.h>

#include "jobrund/plugin.h"

static int
badabi_run(const struct jr_host *host, void *state, jr_task *task)
{
	/* Never called: reaching this is the bug the test looks for. */
	host->task_error(task, "badabi's run was called");
	return EINVAL;
}

JR_EXPORT const struct jr_plugin jr_plugin = {
	.abi_major = 99,
	.abi_minor = 0,
	.size = sizeof(struct jr_plugin),
	.name = "badabi",
	.version = "1.0",
	.description = "a descriptor for ABI 99.0",
	.run = badabi_run,
};
