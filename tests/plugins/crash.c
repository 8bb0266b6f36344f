/*
 * crash.c - a test plugin that misbehaves on request, to exercise process
 * mode's supervision.  Input "segv" dies of a real SIGSEGV, "abort" of
 * SIGABRT, "exit3" exits with status 3, "hang" ignores SIGTERM and sleeps
 * for ever (only SIGKILL ends it), "spin" busy-loops without looking at
 * task_cancelled, "print" writes a line to stdout and one to stderr (which
 * the daemon must log, never mix into results); anything else ("ok") is
 * echoed.  Not thread-safe: it is
 * meant for process mode.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobrund/plugin.h"

static int
crash_run(const struct jr_host *host, void *state, jr_task *task)
{
	const char *in = host->task_input(task);

	if (in == NULL)
		in = "ok";
	if (strcmp(in, "segv") == 0) {
		volatile int *volatile p = NULL;

		*p = 1;
	} else if (strcmp(in, "abort") == 0) {
		abort();
	} else if (strcmp(in, "exit3") == 0) {
		_exit(3);
	} else if (strcmp(in, "hang") == 0) {
		signal(SIGTERM, SIG_IGN);
		for (;;)
			pause();
	} else if (strcmp(in, "print") == 0) {
		printf("noise from the plugin on stdout\n");
		fflush(stdout);
		fprintf(stderr, "noise from the plugin on stderr\n");
	} else if (strcmp(in, "spin") == 0) {
		volatile unsigned long n = 0;

		for (;;)
			n++;
	}
	return host->task_output(task, in, strlen(in)) == 0 ? 0 : EFBIG;
}

JR_PLUGIN_DEFINE(
	.name = "crash",
	.version = "1.0",
	.description = "crashes, exits, hangs or spins on request",
	.run = crash_run,
);
