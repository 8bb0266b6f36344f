/*
 * settings.c - a test plugin with settings, to exercise the host's
 * setting_* services and error reporting: `factor` (an integer from 1 to
 * 100, required) and `label` (a string, optional, default "x"); any other
 * key is an error.  Every problem is reported with setting_error naming
 * the setting.  Each task outputs "LABEL:INPUT*FACTOR".  Thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jobrund/plugin.h"

struct settings_state {
	int64_t factor;
	char *label;
};

static int
settings_init(const struct jr_host *host, jr_job *job, void **state)
{
	const char *const *keys = host->setting_keys(job);
	struct settings_state *st;
	const char *label = "x";
	int64_t factor = 0;
	int bad = 0, r;

	for (size_t i = 0; keys != NULL && keys[i] != NULL; i++) {
		if (strcmp(keys[i], "factor") != 0 &&
		    strcmp(keys[i], "label") != 0) {
			host->setting_error(job, keys[i], "unknown setting "
			    "\"%s\": expected factor or label", keys[i]);
			bad = 1;
		}
	}

	r = host->setting_int(job, "factor", &factor);
	if (r == ENOENT) {
		host->setting_error(job, "factor", "settings.factor is "
		    "required: an integer from 1 to 100");
		bad = 1;
	} else if (r != 0) {
		bad = 1;        /* wrong type: already reported by the host */
	} else if (factor < 1 || factor > 100) {
		host->setting_error(job, "factor", "settings.factor is %lld: "
		    "expected an integer from 1 to 100", (long long)factor);
		bad = 1;
	}

	r = host->setting_string(job, "label", &label);
	if (r != 0 && r != ENOENT)
		bad = 1;
	else if (r == 0 && label[0] == '\0') {
		host->setting_error(job, "label", "settings.label is empty: "
		    "expected a non-empty string");
		bad = 1;
	}

	if (bad)
		return EINVAL;
	if ((st = calloc(1, sizeof *st)) == NULL ||
	    (st->label = strdup(label)) == NULL) {
		free(st);
		return ENOMEM;
	}
	st->factor = factor;
	*state = st;
	return 0;
}

static int
settings_run(const struct jr_host *host, void *state, jr_task *task)
{
	const struct settings_state *st = state;
	const char *in = host->task_input(task);
	long long x;
	char *end;

	if (in == NULL) {
		host->task_error(task, "settings needs an input: an integer");
		return EINVAL;
	}
	errno = 0;
	x = strtoll(in, &end, 10);
	if (*in == '\0' || *end != '\0' || errno == ERANGE ||
	    x > INT64_MAX / 100 || x < INT64_MIN / 100) {
		host->task_error(task, "settings: input \"%.64s\" is not an "
		    "integer from %lld to %lld", in,
		    (long long)(INT64_MIN / 100), (long long)(INT64_MAX / 100));
		return EINVAL;
	}
	return host->task_printf(task, "%s:%lld", st->label,
	    x * (long long)st->factor) == 0 ? 0 : EFBIG;
}

static void
settings_fini(const struct jr_host *host, void *state)
{
	struct settings_state *st = state;

	if (st != NULL)
		free(st->label);
	free(st);
}

JR_PLUGIN_DEFINE(
	.name = "settings",
	.version = "1.0",
	.description = "a test plugin with settings: factor and label",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.init = settings_init,
	.run = settings_run,
	.fini = settings_fini,
);
