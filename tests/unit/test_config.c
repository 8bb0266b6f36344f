/*
 * test_config.c - unit tests for config.c's cfg_load: a full config read
 * back value by value, the defaults, and every kind of mistake, each
 * checked for its message and the exact line it names; also the settings
 * text handed to process-mode workers, read back with
 * cfg_settings_from_text.  (cfg_load_plugins is tested by the integration
 * tests, with real plugins.)
 *
 * Config files are written into a mkdtemp() directory, removed at the end.
 */
#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobrund.h"

static char tmpdir[PATH_MAX];

/* Write TEXT to NAME (relative to the test directory); return its path
 * in a static buffer. */
static const char *
write_file(const char *name, const char *text)
{
	static char path[PATH_MAX + 64];
	FILE *fp;

	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	if ((fp = fopen(path, "w")) == NULL)
		fail_msg("%s: %s", path, strerror(errno));
	fputs(text, fp);
	if (fclose(fp) != 0)
		fail_msg("%s: %s", path, strerror(errno));
	chmod(path, 0644);
	return path;
}

/* Load TEXT as "test.conf"; the errors go to ERRS. */
static struct jr_config *
load(const char *text, struct errlist *errs)
{
	const char *path = write_file("test.conf", text);

	return cfg_load(path, errs);
}

static void
dump_errors(const struct errlist *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		print_message("# %s\n", errs->msgs[i]);
}

/* Assert that ERRS holds "TMPDIR/FILE:LINE: ..." containing WHAT. */
static void
expect_error_in(const struct errlist *errs, const char *file, int line,
		const char *what)
{
	char prefix[PATH_MAX + 64];

	snprintf(prefix, sizeof prefix, "%s/%s:%d: ", tmpdir, file, line);
	for (size_t i = 0; i < errs->n; i++) {
		if (strncmp(errs->msgs[i], prefix, strlen(prefix)) == 0 &&
		    strstr(errs->msgs[i], what) != NULL)
			return;
	}
	dump_errors(errs);
	fail_msg("no error \"%s...%s\"", prefix, what);
}

static void
expect_error(const struct errlist *errs, int line, const char *what)
{
	expect_error_in(errs, "test.conf", line, what);
}

/* Load TEXT, which must be refused with exactly one error, at LINE and
 * containing WHAT. */
static void
expect_only_error(const char *text, int line, const char *what)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg = load(text, &errs);

	assert_null(cfg);
	expect_error(&errs, line, what);
	if (errs.n != 1) {
		dump_errors(&errs);
		fail_msg("%zu errors, expected 1", errs.n);
	}
	errlist_free(&errs);
}

static struct jr_config *
load_ok(const char *text)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg = load(text, &errs);

	if (cfg == NULL || errs.n != 0) {
		dump_errors(&errs);
		fail_msg("config refused");
	}
	errlist_free(&errs);
	return cfg;
}

static void
test_full(void **state)
{
	struct jr_config *cfg;
	struct job_def *j;
	char want[PATH_MAX + 64];

	(void)state;
	cfg = load_ok(
	    "# every key\n"
	    "plugin_dir = \"/opt/jr/plugins\";\n"
	    "control_socket = \"/run/x/ctl.sock\";\n"
	    "state_dir = \"/var/lib/x\";\n"
	    "log_level = \"debug\";\n"
	    "shutdown_grace = \"2m\";\n"
	    "control_group = \"jobrund\";\n"
	    "control_readonly = true;\n"
	    "jobs = (\n"
	    "  {\n"                                         /* line 10 */
	    "    name = \"squares\";\n"
	    "    plugin = \"cpu\";\n"
	    "    mode = \"process\";\n"
	    "    workers = 4;\n"
	    "    schedule = \"@every 1m30s\";\n"
	    "    inputs = ( 1000000, 0x10, 2.5, \"abc\", true, 99999999999, -7, 0.1 );\n"
	    "    timeout = \"30s\";\n"
	    "    kill_grace = 2.5;\n"
	    "    overlap = \"queue\";\n"
	    "    retries = 3;\n"
	    "    enabled = false; prestart = true;\n"
	    "    settings = { n = 3; s = \"x\"; };\n"
	    "  },\n"
	    "  {\n"                                         /* line 24 */
	    "    name = \"cron.job-1_x\";\n"
	    "    plugin = \"sleep\";\n"
	    "    mode = \"thread\";\n"
	    "    schedule = \"*/5 * * * *\";\n"
	    "    inputs = [ 1, 2 ];\n"
	    "    timeout = 60;\n"
	    "    kill_grace = \"500ms\";\n"
	    "    overlap = \"replace\";\n"
	    "  },\n"
	    "  { name = \"m\"; plugin = \"p\"; mode = \"thread\"; schedule = \"@manual\"; overlap = \"allow\"; inputs = []; }\n"
	    ");\n");

	assert_string_equal(cfg->plugin_dir, "/opt/jr/plugins");
	assert_string_equal(cfg->control_socket, "/run/x/ctl.sock");
	assert_string_equal(cfg->state_dir, "/var/lib/x");
	assert_int_equal(cfg->log_level, LOG_DEBUG);
	assert_true(cfg->shutdown_grace == 120);
	assert_string_equal(cfg->control_group, "jobrund");
	assert_true(cfg->control_readonly);
	snprintf(want, sizeof want, "%s/test.conf", tmpdir);
	assert_string_equal(cfg->file, want);
	assert_int_equal(cfg->njobs, 3);

	j = &cfg->jobs[0];
	assert_ptr_equal(cfg_find_job(cfg, "squares"), j);
	assert_string_equal(j->name, "squares");
	assert_string_equal(j->plugin_name, "cpu");
	assert_int_equal(j->mode, MODE_PROCESS);
	assert_string_equal(mode_name(j->mode), "process");
	assert_int_equal(j->workers, 4);
	assert_int_equal(j->sched, SCHED_EVERY);
	assert_string_equal(j->schedule, "@every 1m30s");
	assert_true(j->every_s == 90);
	assert_null(j->cron);
	assert_true(j->has_inputs);
	assert_int_equal(j->ninputs, 8);
	assert_string_equal(j->inputs[0], "1000000");
	assert_string_equal(j->inputs[1], "0x10");
	assert_string_equal(j->inputs[2], "2.5");
	assert_string_equal(j->inputs[3], "abc");
	assert_string_equal(j->inputs[4], "true");
	/* libconfig 1.5 reads this literal as 1215752191. */
	assert_string_equal(j->inputs[5], "99999999999");
	assert_string_equal(j->inputs[6], "-7");
	assert_string_equal(j->inputs[7], "0.1");
	assert_true(j->timeout_s == 30);
	assert_true(j->kill_grace_s == 2.5);
	assert_int_equal(j->overlap, OVERLAP_QUEUE);
	assert_int_equal(j->retries, 3);
	assert_false(j->enabled);
	assert_true(j->prestart);
	assert_int_equal(j->line, 10);
	assert_non_null(j->settings);
	assert_int_equal(config_setting_length(j->settings), 2);
	assert_non_null(j->settings_text);
	assert_null(j->plugin);

	j = &cfg->jobs[1];
	assert_ptr_equal(cfg_find_job(cfg, "cron.job-1_x"), j);
	assert_int_equal(j->mode, MODE_THREAD);
	assert_string_equal(mode_name(j->mode), "thread");
	assert_int_equal(j->workers, 1);
	assert_int_equal(j->sched, SCHED_CRON);
	assert_non_null(j->cron);
	assert_string_equal(j->schedule, "*/5 * * * *");
	assert_int_equal(j->ninputs, 2);
	assert_string_equal(j->inputs[0], "1");
	assert_string_equal(j->inputs[1], "2");
	assert_true(j->timeout_s == 60);
	assert_true(j->kill_grace_s == 0.5);
	assert_int_equal(j->overlap, OVERLAP_REPLACE);
	assert_true(j->enabled);
	assert_false(j->prestart);                      /* the default */
	assert_int_equal(j->line, 24);
	assert_null(j->settings);
	assert_null(j->settings_text);

	j = &cfg->jobs[2];
	assert_int_equal(j->sched, SCHED_MANUAL);
	assert_int_equal(j->overlap, OVERLAP_ALLOW);
	assert_true(j->has_inputs);     /* given, if empty */
	assert_int_equal(j->ninputs, 0);
	assert_int_equal(j->line, 34);

	assert_null(cfg_find_job(cfg, "nope"));
	assert_null(cfg_find_job(cfg, NULL));
	cfg_free(cfg);
}

static void
test_defaults(void **state)
{
	struct jr_config *cfg;
	struct job_def *j;

	(void)state;
	cfg = load_ok("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\"; } );\n");
	assert_string_equal(cfg->plugin_dir, JR_PLUGIN_DIR);
	assert_string_equal(cfg->control_socket, JR_RUN_DIR "/jobrund.sock");
	assert_string_equal(cfg->state_dir, JR_STATE_DIR);
	assert_int_equal(cfg->log_level, LOG_INFO);
	assert_true(cfg->shutdown_grace == 10);
	assert_null(cfg->control_group);
	assert_false(cfg->control_readonly);
	assert_int_equal(cfg->njobs, 1);
	j = &cfg->jobs[0];
	assert_int_equal(j->workers, 1);
	assert_int_equal(j->sched, SCHED_START);
	assert_string_equal(j->schedule, "@start");
	assert_false(j->has_inputs);
	assert_int_equal(j->ninputs, 0);
	assert_null(j->inputs);
	assert_true(j->timeout_s == 0);
	assert_true(j->kill_grace_s == 5);
	assert_int_equal(j->overlap, OVERLAP_SKIP);
	assert_int_equal(j->retries, 0);
	assert_true(j->enabled);
	assert_null(j->settings);
	assert_null(j->settings_text);
	assert_int_equal(j->line, 1);
	cfg_free(cfg);

	/* No jobs at all is a valid, if idle, config. */
	cfg = load_ok("# nothing\n");
	assert_int_equal(cfg->njobs, 0);
	cfg_free(cfg);
	cfg = load_ok("jobs = ();\n");
	assert_int_equal(cfg->njobs, 0);
	cfg_free(cfg);
	cfg = load_ok("jobs = [];\n");
	assert_int_equal(cfg->njobs, 0);
	cfg_free(cfg);
}

static void
test_relative_paths(void **state)
{
	char cwd[PATH_MAX], want[PATH_MAX + 64], real[PATH_MAX];
	struct errlist errs = { 0 };
	struct jr_config *cfg;

	(void)state;
	if (realpath(tmpdir, real) == NULL)
		fail_msg("realpath %s: %s", tmpdir, strerror(errno));
	snprintf(want, sizeof want, "%s/sub", tmpdir);
	mkdir(want, 0755);
	write_file("sub/rel.conf",
		   "plugin_dir = \"plugins\";\n"
		   "control_socket = \"./run/ctl.sock\";\n"
		   "state_dir = \".\";\n");

	/* Given as a relative path: resolved against the file's directory,
	 * not the working directory. */
	assert_non_null(getcwd(cwd, sizeof cwd));
	assert_int_equal(chdir(tmpdir), 0);
	cfg = cfg_load("sub/rel.conf", &errs);
	assert_int_equal(chdir(cwd), 0);
	if (cfg == NULL) {
		dump_errors(&errs);
		fail_msg("config refused");
	}
	snprintf(want, sizeof want, "%s/sub/plugins", real);
	assert_string_equal(cfg->plugin_dir, want);
	snprintf(want, sizeof want, "%s/sub/run/ctl.sock", real);
	assert_string_equal(cfg->control_socket, want);
	snprintf(want, sizeof want, "%s/sub", real);
	assert_string_equal(cfg->state_dir, want);
	assert_string_equal(cfg->file, "sub/rel.conf");
	cfg_free(cfg);
	errlist_free(&errs);
}

static void
test_syntax_error(void **state)
{
	(void)state;
	expect_only_error("log_level = \"info\";\n"
			  "\n"
			  "jobs = ( { name = \"a\"; workers = ; } );\n",
			  3, "syntax error");
}

static void
test_unknown_keys(void **state)
{
	(void)state;
	expect_only_error("log_level = \"info\";\nlog_levle = \"debug\";\n",
			  2, "unknown key 'log_levle'");
	expect_only_error("jobs = (\n"
			  "  { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "    wokers = 2; }\n"
			  ");\n",
			  3, "job 'a': unknown key 'wokers'");
}

static void
test_wrong_types(void **state)
{
	struct errlist errs = { 0 };

	(void)state;
	assert_null(load(
	    "plugin_dir = 5;\n"
	    "control_readonly = \"yes\";\n"
	    "shutdown_grace = true;\n"
	    "jobs = (\n"
	    "  { name = \"x\"; plugin = \"p\"; mode = \"thread\";\n"
	    "    workers = \"2\";\n"                       /* line 6 */
	    "    enabled = 1; prestart = \"yes\";\n"
	    "    retries = 1.5;\n"
	    "    settings = [ 1 ];\n"
	    "    inputs = \"abc\";\n"                      /* line 10 */
	    "    timeout = [ 1 ];\n"
	    "  },\n"
	    "  \"job\",\n"                                 /* line 13 */
	    "  { name = 7; plugin = \"p\"; mode = \"thread\"; }\n"
	    ");\n", &errs));
	expect_error(&errs, 1, "plugin_dir: expected a string, got an integer");
	expect_error(&errs, 2, "control_readonly: expected a boolean");
	expect_error(&errs, 3, "shutdown_grace: expected a duration");
	expect_error(&errs, 6, "job 'x': workers: expected an integer, got a string");
	expect_error(&errs, 7, "job 'x': enabled: expected a boolean (true or false), got an integer");
	expect_error(&errs, 7, "job 'x': prestart: expected a boolean (true or false), got a string");
	expect_error(&errs, 8, "job 'x': retries: expected an integer, got a number");
	expect_error(&errs, 9, "job 'x': settings: expected a group");
	expect_error(&errs, 10, "job 'x': inputs: expected an array");
	expect_error(&errs, 11, "job 'x': timeout: expected a duration");
	expect_error(&errs, 13, "jobs[1]: expected a group");
	expect_error(&errs, 14, "job #3: name: expected a string, got an integer");
	assert_int_equal(errs.n, 12);
	errlist_free(&errs);

	expect_only_error("jobs = { name = \"a\"; };\n", 1,
			  "jobs: expected a list of groups");
}

static void
test_ranges(void **state)
{
	struct errlist errs = { 0 };

	(void)state;
	assert_null(load(
	    "shutdown_grace = 3601;\n"
	    "jobs = (\n"
	    "  { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
	    "    workers = 0;\n"                            /* line 4 */
	    "    retries = -1;\n"
	    "    timeout = -5;\n"
	    "    kill_grace = \"2h\";\n"
	    "  },\n"
	    "  { name = \"b\"; plugin = \"p\"; mode = \"thread\";\n"
	    "    workers = 99999999999;\n"                  /* line 10 */
	    "    retries = 101;\n"
	    "    timeout = \"-5s\";\n"
	    "  },\n"
	    "  { name = \"c\"; plugin = \"p\"; mode = \"thread\";\n"
	    "    workers = 99999999999999999999999;\n"      /* line 15 */
	    "    retries = 4294967296;\n"
	    "    timeout = \"366d\";\n"
	    "  },\n"
	    "  { name = \"d\"; plugin = \"p\"; mode = \"thread\";\n"
	    "    workers = 4294967297;\n"                   /* line 20 */
	    "    timeout = 4294967296;\n"
	    "    kill_grace = 99999999999999999999999L;\n"
	    "    retries = 1025L;\n"
	    "    inputs = [ 99999999999999999999999 ];\n"
	    "  }\n"
	    ");\n", &errs));
	expect_error(&errs, 1, "shutdown_grace: 3601 is out of range (0 to 1h)");
	expect_error(&errs, 4, "job 'a': workers: 0 is out of range (1..1024)");
	expect_error(&errs, 5, "job 'a': retries: -1 is out of range (0..100)");
	expect_error(&errs, 6, "job 'a': timeout: -5 is out of range");
	expect_error(&errs, 7, "job 'a': kill_grace: \"2h\" is out of range (0 to 1h)");
	expect_error(&errs, 10, "job 'b': workers: 99999999999 is out of range (1..1024)");
	expect_error(&errs, 11, "job 'b': retries: 101 is out of range (0..100)");
	expect_error(&errs, 12, "job 'b': timeout: \"-5s\" is out of range");
	expect_error(&errs, 15, "job 'c': workers: 99999999999999999999999 is out of range (1..1024)");
	/* These wrap to 0 and 1 in libconfig 1.5: they must not pass. */
	expect_error(&errs, 16, "job 'c': retries: 4294967296 is out of range (0..100)");
	expect_error(&errs, 17, "job 'c': timeout: \"366d\" is out of range");
	expect_error(&errs, 20, "job 'd': workers: 4294967297 is out of range");
	expect_error(&errs, 21, "job 'd': timeout: 4294967296 is out of range");
	expect_error(&errs, 22, "job 'd': kill_grace: 99999999999999999999999L is out of range");
	expect_error(&errs, 23, "job 'd': retries: 1025 is out of range");
	expect_error(&errs, 24, "job 'd': inputs[0]: 99999999999999999999999 is out of range");
	assert_int_equal(errs.n, 16);
	errlist_free(&errs);

	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  inputs = ( 1, 1e400 ); } );\n",
			  2, "job 'a': inputs[1]: not a finite number");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  timeout = 1e400; } );\n",
			  2, "job 'a': timeout: not a finite number");
}

static void
test_bad_values(void **state)
{
	char longname[80];
	char *text;

	(void)state;
	expect_only_error("jobs = (\n"
			  "  { name = \"a\"; plugin = \"p\";\n"
			  "    mode = \"fork\"; }\n);\n",
			  3, "job 'a': mode: \"fork\" is not a mode");
	expect_only_error("jobs = (\n"
			  "  { name = \"a b\"; plugin = \"p\"; mode = \"thread\"; }\n);\n",
			  2, "job #1: name: \"a b\" is not a valid name");
	expect_only_error("jobs = (\n"
			  "  { name = \"\"; plugin = \"p\"; mode = \"thread\"; }\n);\n",
			  2, "name: \"\" is not a valid name");
	memset(longname, 'n', 65);
	longname[65] = '\0';
	text = xasprintf("jobs = ( { name = \"%s\"; plugin = \"p\"; mode = \"thread\"; } );\n",
			 longname);
	expect_only_error(text, 1, "is not a valid name");
	free(text);
	longname[64] = '\0';
	text = xasprintf("jobs = ( { name = \"%s\"; plugin = \"p\"; mode = \"thread\"; } );\n",
			 longname);
	cfg_free(load_ok(text));
	free(text);
	expect_only_error("jobs = (\n"
			  "  { name = \"a\"; plugin = \"../evil\"; mode = \"thread\"; }\n);\n",
			  2, "job 'a': plugin: \"../evil\" is not a valid plugin name");
	expect_only_error("log_level = \"loud\";\n", 1,
			  "log_level: \"loud\" is not a level");
	expect_only_error("control_group = \"\";\n", 1,
			  "control_group: must not be empty");
	expect_only_error("\nplugin_dir = \"\";\n", 2,
			  "plugin_dir: must not be empty");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  overlap = \"never\"; } );\n",
			  2, "job 'a': overlap: \"never\" is not a policy");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  inputs = ( 1, { x = 1; }, 3 ); } );\n",
			  2, "job 'a': inputs[1]: expected a number, a string or a boolean, got a group");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  inputs = ( 1, 2, ( 3 ) ); } );\n",
			  2, "job 'a': inputs[2]: expected a number, a string or a boolean, got a list");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  settings = { deep = { n = 99999999999999999999999; }; }; } );\n",
			  2, "job 'a': settings.deep.n: 99999999999999999999999 is out of range");
}

static void
test_duplicate_names(void **state)
{
	struct errlist errs = { 0 };
	char want[PATH_MAX + 64];

	(void)state;
	assert_null(load("jobs = (\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"thread\"; },\n"
			 "  { name = \"b\"; plugin = \"p\"; mode = \"thread\"; },\n"
			 "\n"
			 "  { name = \"a\"; plugin = \"q\"; mode = \"process\"; }\n"
			 ");\n", &errs));
	snprintf(want, sizeof want, "duplicate name, first defined at %s/test.conf:2",
		 tmpdir);
	expect_error(&errs, 5, want);
	assert_int_equal(errs.n, 1);
	errlist_free(&errs);
}

/* The scheduling and history keys: defaults, values, inheritance. */
static void
test_schedule_keys(void **state)
{
	struct jr_config *cfg;
	struct job_def *a, *b, *c;

	(void)state;
	cfg = load_ok("jobs = (\n"
		      "  { name = \"a\"; plugin = \"p\"; mode = \"thread\"; },\n"
		      "  { name = \"b\"; plugin = \"p\"; mode = \"thread\";\n"
		      "    schedule = \"0 3 * * *\"; timezone = \"UTC\"; catchup = \"once\";\n"
		      "    overlap = \"allow\"; max_concurrent_runs = 7; retries = 2;\n"
		      "    retry_delay = \"250ms\"; retry_max_delay = \"2s\";\n"
		      "    history_keep = 5; },\n"
		      "  { name = \"c\"; plugin = \"p\"; mode = \"thread\";\n"
		      "    retry_delay = \"5m\"; }\n"
		      ");\n"
		      "history_keep = 20;\n");
	a = cfg_find_job(cfg, "a");
	b = cfg_find_job(cfg, "b");
	c = cfg_find_job(cfg, "c");
	assert_int_equal(cfg->history_keep, 20);
	assert_int_equal(a->max_concurrent_runs, 4);
	assert_true(a->retry_delay_s == 1.0 && a->retry_max_delay_s == 60.0);
	assert_null(a->timezone);
	assert_int_equal(a->catchup, CATCHUP_NONE);
	assert_int_equal(a->history_keep, 20);  /* the top level's, set after */
	assert_string_equal(b->timezone, "UTC");
	assert_int_equal(b->catchup, CATCHUP_ONCE);
	assert_int_equal(b->max_concurrent_runs, 7);
	assert_true(b->retry_delay_s == 0.25 && b->retry_max_delay_s == 2.0);
	assert_int_equal(b->history_keep, 5);
	/* A long delay without a cap of its own is its own cap. */
	assert_true(c->retry_delay_s == 300.0 && c->retry_max_delay_s == 300.0);
	cfg_free(cfg);

	cfg = load_ok("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\"; } );\n");
	assert_int_equal(cfg->history_keep, 100);
	assert_int_equal(cfg->jobs[0].history_keep, 100);
	cfg_free(cfg);

	expect_only_error("history_keep = 0;\n", 1, "history_keep: 0 is out of range");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  schedule = \"@every 1s\"; catchup = \"once\"; } );\n", 2,
			  "job 'a': catchup: applies to cron schedules only");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  schedule = \"@daily\"; timezone = \"No/Such_Zone\"; } );\n", 2,
			  "job 'a': timezone: \"No/Such_Zone\" is not a time zone");
	expect_only_error("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			  "  max_concurrent_runs = 0; overlap = \"allow\"; } );\n", 2,
			  "max_concurrent_runs: 0 is out of range (1..1024)");
}

/* Three of one name: each later one names the first. */
static void
test_duplicate_names_many(void **state)
{
	struct errlist errs = { 0 };
	char want[PATH_MAX + 64];

	(void)state;
	assert_null(load("jobs = (\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"thread\"; },\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"thread\"; },\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"thread\"; }\n"
			 ");\n", &errs));
	snprintf(want, sizeof want, "duplicate name, first defined at %s/test.conf:2",
		 tmpdir);
	expect_error(&errs, 3, want);
	expect_error(&errs, 4, want);
	assert_int_equal(errs.n, 2);
	errlist_free(&errs);
}

static void
test_missing_required(void **state)
{
	struct errlist errs = { 0 };

	(void)state;
	assert_null(load("jobs = (\n"
			 "  { plugin = \"p\"; mode = \"thread\"; },\n"
			 "  { name = \"b\"; mode = \"thread\"; },\n"
			 "  { name = \"c\"; plugin = \"p\"; }\n"
			 ");\n", &errs));
	expect_error(&errs, 2, "job #1: missing required key 'name'");
	expect_error(&errs, 3, "job 'b': missing required key 'plugin'");
	expect_error(&errs, 4, "job 'c': missing required key 'mode'");
	assert_int_equal(errs.n, 3);
	errlist_free(&errs);
}

static void
test_bad_schedules(void **state)
{
	struct errlist errs = { 0 };

	(void)state;
	assert_null(load("jobs = (\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			 "    schedule = \"@every 0s\"; },\n"
			 "  { name = \"b\"; plugin = \"p\"; mode = \"thread\";\n"
			 "    schedule = \"@every\"; },\n"
			 "  { name = \"c\"; plugin = \"p\"; mode = \"thread\";\n"
			 "    schedule = \"@every 5 parsecs\"; },\n"
			 "  { name = \"d\"; plugin = \"p\"; mode = \"thread\";\n"
			 "    schedule = \"whenever\"; },\n"
			 "  { name = \"e\"; plugin = \"p\"; mode = \"thread\";\n"
			 "    schedule = 5; }\n"
			 ");\n", &errs));
	expect_error(&errs, 3, "job 'a': schedule: \"@every 0s\": the interval must be more than zero");
	expect_error(&errs, 5, "job 'b': schedule: \"@every\": missing the interval");
	expect_error(&errs, 7, "job 'c': schedule: \"@every 5 parsecs\": \"5 parsecs\" is not a duration");
	expect_error(&errs, 9, "job 'd': schedule: \"whenever\": ");
	expect_error(&errs, 11, "job 'e': schedule: expected a string, got an integer");
	assert_int_equal(errs.n, 5);
	errlist_free(&errs);
}

static void
test_bad_durations(void **state)
{
	struct errlist errs = { 0 };

	(void)state;
	assert_null(load("shutdown_grace = \"soon\";\n"
			 "jobs = (\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
			 "    timeout = \"5x\";\n"
			 "    kill_grace = \"1.5.2s\"; }\n"
			 ");\n", &errs));
	expect_error(&errs, 1, "shutdown_grace: \"soon\" is not a duration");
	expect_error(&errs, 4, "job 'a': timeout: \"5x\" is not a duration");
	expect_error(&errs, 5, "job 'a': kill_grace: \"1.5.2s\" is not a duration");
	assert_int_equal(errs.n, 3);
	errlist_free(&errs);
}

/* Every mistake of a file is reported, in one go. */
static void
test_many_errors(void **state)
{
	struct errlist errs = { 0 };

	(void)state;
	assert_null(load("bogus = 1;\n"
			 "log_level = \"loud\";\n"
			 "jobs = (\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"fork\";\n"
			 "    workers = 0; },\n"
			 "  { name = \"b\"; plugin = \"p\"; mode = \"thread\";\n"
			 "    retries = 200; colour = \"red\"; },\n"
			 "  { name = \"a\"; plugin = \"p\"; mode = \"thread\"; }\n"
			 ");\n", &errs));
	expect_error(&errs, 1, "unknown key 'bogus'");
	expect_error(&errs, 2, "log_level: \"loud\"");
	expect_error(&errs, 4, "job 'a': mode: \"fork\"");
	expect_error(&errs, 5, "job 'a': workers: 0 is out of range");
	expect_error(&errs, 7, "job 'b': retries: 200 is out of range");
	expect_error(&errs, 7, "job 'b': unknown key 'colour'");
	expect_error(&errs, 8, "job 'a': duplicate name");
	assert_int_equal(errs.n, 7);
	errlist_free(&errs);
}

/* Integers are checked against the file's own text: literals in
 * @include files, the same file included twice, and numbers in
 * strings and comments that must not be taken for literals. */
static void
test_integer_literals(void **state)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg;
	const struct job_def *j;

	(void)state;
	write_file("part.conf", "  /* 11 */ workers = 3; # 12\n");
	cfg = load_ok("// 1 2 3 \"\n"
		      "shutdown_grace = 7; /* 4\n 5 */ log_level = \"info\"; # 6\n"
		      "jobs = (\n"
		      "  { name = \"a1\"; plugin = \"x-1\"; mode = \"thread\";\n"
		      "    @include \"part.conf\"\n"
		      "    inputs = ( \"8 \\\"9\\\" \\\\\", 1.5e3, -.5, 007, +3, 0x1fL, 5LL, 3000000000, 0xFFFFFFFF );\n"
		      "  },\n"
		      "  { name = \"a2\"; plugin = \"x\"; mode = \"thread\";\n"
		      "@include \"part.conf\"\n"
		      "    inputs = [ 1, 5000000000, -2147483649 ];\n"
		      "  }\n"
		      ");\n");
	assert_true(cfg->shutdown_grace == 7);
	j = &cfg->jobs[0];
	assert_int_equal(j->workers, 3);
	assert_int_equal(j->ninputs, 9);
	assert_string_equal(j->inputs[0], "8 \"9\" \\");
	assert_string_equal(j->inputs[1], "1500");
	assert_string_equal(j->inputs[2], "-0.5");
	assert_string_equal(j->inputs[3], "7");
	assert_string_equal(j->inputs[4], "3");
	assert_string_equal(j->inputs[5], "0x1F");
	assert_string_equal(j->inputs[6], "5");
	assert_string_equal(j->inputs[7], "3000000000");
	assert_string_equal(j->inputs[8], "0xFFFFFFFF");
	j = &cfg->jobs[1];
	assert_int_equal(j->workers, 3);
	assert_int_equal(j->ninputs, 3);
	assert_string_equal(j->inputs[0], "1");
	assert_string_equal(j->inputs[1], "5000000000");
	assert_string_equal(j->inputs[2], "-2147483649");
	cfg_free(cfg);

	/* A mistake in an included file is reported with its own path. */
	write_file("part.conf", "\n  workers = 5000000000;\n");
	assert_null(load("jobs = (\n"
			 "  { name = \"a\"; plugin = \"x\"; mode = \"thread\";\n"
			 "    @include \"part.conf\"\n"
			 "  }\n"
			 ");\n", &errs));
	expect_error_in(&errs, "part.conf", 2,
			"job 'a': workers: 5000000000 is out of range");
	assert_int_equal(errs.n, 1);
	errlist_free(&errs);
}

/* Compare two settings trees: same names, types, formats and values
 * (the names of A and B themselves only when NAMES). */
static void
assert_same_setting(const config_setting_t *a, const config_setting_t *b,
		    bool names)
{
	const char *na = config_setting_name(a), *nb = config_setting_name(b);

	if (names && ((na == NULL) != (nb == NULL) ||
		      (na && strcmp(na, nb) != 0)))
		fail_msg("name %s != %s", na ? na : "-", nb ? nb : "-");
	assert_int_equal(config_setting_type(a), config_setting_type(b));
	switch (config_setting_type(a)) {
	case CONFIG_TYPE_INT:
		assert_int_equal(config_setting_get_int(a), config_setting_get_int(b));
		assert_int_equal(config_setting_get_format(a), config_setting_get_format(b));
		break;
	case CONFIG_TYPE_INT64:
		assert_true(config_setting_get_int64(a) == config_setting_get_int64(b));
		assert_int_equal(config_setting_get_format(a), config_setting_get_format(b));
		break;
	case CONFIG_TYPE_FLOAT:
		if (memcmp(&a->value.fval, &b->value.fval, sizeof(double)) != 0)
			fail_msg("%s: %.17g != %.17g", na ? na : "-",
				 config_setting_get_float(a), config_setting_get_float(b));
		break;
	case CONFIG_TYPE_STRING:
		assert_string_equal(config_setting_get_string(a), config_setting_get_string(b));
		break;
	case CONFIG_TYPE_BOOL:
		assert_int_equal(config_setting_get_bool(a), config_setting_get_bool(b));
		break;
	default:
		assert_int_equal(config_setting_length(a), config_setting_length(b));
		for (int i = 0; i < config_setting_length(a); i++)
			assert_same_setting(config_setting_get_elem(a, (unsigned)i),
					    config_setting_get_elem(b, (unsigned)i), true);
	}
}

static void
test_settings_text(void **state)
{
	struct jr_config *cfg;
	config_t tree;
	char err[256];
	const struct job_def *j;

	(void)state;
	cfg = load_ok("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\";\n"
		      "  settings = {\n"
		      "    f = 0.30000000000000004; g = 1.0; h = -2.5e-300; inf = 1e400;\n"
		      "    s = \"quote \\\" back \\\\ nl \\n tab \\t ctl \\x01 utf8 \\xc3\\xa9\";\n"
		      "    empty = \"\";\n"
		      "    i = -42; big = 99999999999; x = 0x10; xbig = 0xFFFFFFFF; l = 7L;\n"
		      "    yes = true; no = false;\n"
		      "    arr = [ 1, 3000000000 ]; farr = [ 0.1, 0.2 ]; sarr = [ \"a\", \"b\" ];\n"
		      "    noarr = [];\n"
		      "    lst = ( 1, \"two\", 3.5, ( 4, [ 5 ] ), { six = 6; } );\n"
		      "    grp = { inner = { deep = \"yes\"; }; n = 1; };\n"
		      "  };\n"
		      "} );\n");
	j = &cfg->jobs[0];
	assert_non_null(j->settings_text);
	if (cfg_settings_from_text(j->settings_text, &tree, err, sizeof err) != 0)
		fail_msg("settings text refused: %s\n%s", err, j->settings_text);
	assert_same_setting(j->settings, config_root_setting(&tree), false);
	/* The wrapped libconfig 1.5 value must not be what travels. */
	assert_true(config_setting_get_int64(config_setting_get_member(
	    config_root_setting(&tree), "big")) == 99999999999LL);
	config_destroy(&tree);
	cfg_free(cfg);

	/* An empty group, and no settings at all. */
	cfg = load_ok("jobs = ( { name = \"a\"; plugin = \"p\"; mode = \"thread\"; settings = { }; } );\n");
	j = &cfg->jobs[0];
	assert_non_null(j->settings);
	assert_non_null(j->settings_text);
	assert_int_equal(cfg_settings_from_text(j->settings_text, &tree, err, sizeof err), 0);
	assert_int_equal(config_setting_length(config_root_setting(&tree)), 0);
	config_destroy(&tree);
	cfg_free(cfg);
	assert_int_equal(cfg_settings_from_text(NULL, &tree, err, sizeof err), 0);
	assert_int_equal(config_setting_length(config_root_setting(&tree)), 0);
	config_destroy(&tree);

	/* Broken text: an error, and a tree that is safe to destroy. */
	err[0] = '\0';
	assert_int_equal(cfg_settings_from_text("a = ;", &tree, err, sizeof err), -1);
	assert_int_equal(errno, EINVAL);
	assert_true(err[0] != '\0');
	config_destroy(&tree);
}

static void
test_file_problems(void **state)
{
	struct errlist errs = { 0 };
	char path[PATH_MAX + 64];
	const char *p;

	(void)state;
	snprintf(path, sizeof path, "%s/does-not-exist.conf", tmpdir);
	assert_null(cfg_load(path, &errs));
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msgs[0], "does-not-exist.conf: No such file"));
	errlist_free(&errs);

	/* Anyone could make the daemon run anything. */
	p = write_file("open.conf", "log_level = \"info\";\n");
	chmod(p, 0666);
	assert_null(cfg_load(p, &errs));
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msgs[0], "writable by others"));
	errlist_free(&errs);

	assert_null(cfg_load(tmpdir, &errs));
	assert_int_equal(errs.n, 1);
	assert_non_null(strstr(errs.msgs[0], "not a regular file"));
	errlist_free(&errs);
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int
setup(void **state)
{
	const char *base = getenv("TMPDIR");
	char real[PATH_MAX];

	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "%s/jrtest-config.XXXXXX",
		 base != NULL && *base != '\0' ? base : "/tmp");
	if (mkdtemp(tmpdir) == NULL) {
		fprintf(stderr, "mkdtemp %s: %s\n", tmpdir, strerror(errno));
		return -1;
	}
	/* Messages name @include files by their resolved directory. */
	if (realpath(tmpdir, real) == NULL) {
		fprintf(stderr, "realpath %s: %s\n", tmpdir, strerror(errno));
		return -1;
	}
	snprintf(tmpdir, sizeof tmpdir, "%s", real);
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_relative_paths),
		cmocka_unit_test(test_syntax_error),
		cmocka_unit_test(test_unknown_keys),
		cmocka_unit_test(test_wrong_types),
		cmocka_unit_test(test_ranges),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_duplicate_names),
		cmocka_unit_test(test_duplicate_names_many),
		cmocka_unit_test(test_schedule_keys),
		cmocka_unit_test(test_missing_required),
		cmocka_unit_test(test_bad_schedules),
		cmocka_unit_test(test_bad_durations),
		cmocka_unit_test(test_many_errors),
		cmocka_unit_test(test_integer_literals),
		cmocka_unit_test(test_settings_text),
		cmocka_unit_test(test_file_problems),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
