/*
 * repeat.c - an example jobrund plugin, built outside jobrund's tree
 * against the installed <jobrund/plugin.h> (see the Makefile beside it):
 * each task's output is its input repeated settings.times times, joined by
 * settings.separator.
 *
 * It shows what every plugin does: validate its settings in init (and
 * reject the ones it does not know), keep its own copy of what it keeps,
 * read the input and write the output through the host's table, poll for
 * cancellation, and export nothing but the descriptor.  jobrund-plugin(3)
 * documents the whole ABI.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jobrund/plugin.h>

struct repeat {
	int64_t times;
	char *separator;
};

/* Once per job (and by `jobrund -t`): validate the settings, build state. */
static int
repeat_init(const struct jr_host *host, jr_job *job, void **state)
{
	const char *const *key;
	const char *separator = " ";
	int64_t times = 2;
	struct repeat *r;
	int err = 0;

	/* A misspelt setting is an error, not a silent default. */
	for (key = host->setting_keys(job); key != NULL && *key != NULL; key++) {
		if (strcmp(*key, "times") != 0 && strcmp(*key, "separator") != 0) {
			host->setting_error(job, *key, "unknown setting");
			err = EINVAL;
		}
	}
	switch (host->setting_int(job, "times", &times)) {
	case 0:
		if (times < 1 || times > 1000) {
			host->setting_error(job, "times", "must be from 1 to 1000, not %lld",
					    (long long)times);
			err = EINVAL;
		}
		break;
	case ENOENT:            /* absent: keep the default */
		break;
	default:                /* wrong type: the host has said so */
		err = EINVAL;
	}
	if (host->setting_string(job, "separator", &separator) == EINVAL)
		err = EINVAL;
	if (err != 0)
		return err;

	/* separator belongs to the host and dies after init: copy it. */
	if ((r = malloc(sizeof *r)) == NULL)
		return ENOMEM;
	if ((r->separator = strdup(separator)) == NULL) {
		free(r);
		return ENOMEM;
	}
	r->times = times;
	*state = r;
	return 0;
}

/* Once per task, maybe in several threads at once: state is read-only. */
static int
repeat_run(const struct jr_host *host, void *state, jr_task *task)
{
	const struct repeat *r = state;
	const char *input = host->task_input(task);
	int err;

	if (input == NULL) {
		host->task_error(task, "repeat needs inputs");
		return EINVAL;
	}
	for (int64_t i = 0; i < r->times; i++) {
		if (host->task_cancelled(task)) {
			host->task_error(task, "cancelled after %lld of %lld",
					 (long long)i, (long long)r->times);
			return ECANCELED;
		}
		err = host->task_printf(task, "%s%s", i > 0 ? r->separator : "", input);
		if (err != 0) {
			host->task_error(task, "output too long");
			return err;
		}
	}
	return 0;
}

static void
repeat_fini(const struct jr_host *host, void *state)
{
	struct repeat *r = state;

	(void)host;
	if (r != NULL) {
		free(r->separator);
		free(r);
	}
}

JR_PLUGIN_DEFINE(
	.name = "repeat",
	.version = "1.0",
	.description = "repeat each input settings.times times",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.init = repeat_init,
	.run = repeat_run,
	.fini = repeat_fini);
