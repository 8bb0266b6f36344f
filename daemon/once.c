/*
 * once.c - `jobrund --once [JOB...]`: run jobs once in the foreground and
 * print each task's result as a JSON line as it finishes.
 *
 * It is the daemon's machinery (config, plugins, both executors, the
 * event loop) without schedules: how users and tests check a config and
 * see what a job does.  Exit status: 0 when every task succeeded, 3 when
 * any did not, 1 on a config error, 2 on a usage error (an unknown job).
 * SIGINT or SIGTERM cancels what runs; the results still come out.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

struct once_state {
	struct jobrt **rts;
	size_t nrts;
	size_t runs_left;
	size_t tasks_failed;
	bool interrupted;
	bool draining;          /* runs done: waiting for workers to exit */
	struct loop_timer *check, *deadline;
	double grace;           /* the config's shutdown_grace */
};

static void
print_result(const struct task_result *r, void *arg)
{
	(void)arg;
	result_write_json(stdout, r);
	/* One line per result as it happens: readers pipe us into jq. */
	fflush(stdout);
}

static void
drain_check(void *arg)
{
	(void)arg;
	if (run_all_quiet())
		loop_break();
}

static void
drain_deadline(void *arg)
{
	(void)arg;
	log_msg(LOG_WARNING, "%d thread%s still inside a plugin after "
		"shutdown_grace: exiting anyway", tpool_threads_alive(),
		tpool_threads_alive() == 1 ? "" : "s");
	loop_break();
}

static void
retire_all(struct once_state *st, bool now)
{
	for (size_t i = 0; i < st->nrts; i++)
		if (st->rts[i])
			jobrt_retire(st->rts[i], now);
	for (size_t i = 0; i < st->nrts; i++)
		st->rts[i] = NULL;
}

static void
run_ended(struct jobrt *rt, uint64_t id, size_t ntasks, size_t nfailed,
	  double wall, void *arg)
{
	struct once_state *st = arg;

	(void)rt; (void)id; (void)ntasks; (void)wall;
	st->tasks_failed += nfailed;
	if (--st->runs_left > 0)
		return;
	/* Every result is out: stop the executors and wait for workers to
	 * be reaped, so no child outlives us. */
	st->draining = true;
	retire_all(st, false);
	st->check = loop_timer_add(0, 0.01, drain_check, st);
	/* A thread stuck in a plugin never ends: do not wait for ever. */
	st->deadline = loop_timer_add(st->grace + 1.0, 0, drain_deadline, st);
}

static void
on_signal(int signo, void *arg)
{
	struct once_state *st = arg;

	if (signo == SIGHUP)
		return;
	if (st->interrupted) {
		log_msg(LOG_WARNING, "second %s: exiting now", sigabbrev_np(signo));
		exit(3);
	}
	st->interrupted = true;
	log_msg(LOG_NOTICE, "SIG%s: cancelling the running tasks", sigabbrev_np(signo));
	for (size_t i = 0; i < st->nrts; i++)
		if (st->rts[i])
			jobrt_cancel(st->rts[i], true);
}

int
once_main(const char *file, char **names, int nnames, bool log_stderr)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg;
	struct once_state st = { 0 };
	struct run_hooks hooks = { 0 };
	struct job_def **selected;
	size_t nsel = 0;
	bool broken = false;
	int rc;

	log_init("jobrund", log_stderr, LOG_INFO);
	cfg = cfg_load(file, &errs);
	if (cfg == NULL) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msgs[i]);
		errlist_free(&errs);
		return 1;
	}
	log_set_level(cfg->log_level);

	selected = xcalloc(cfg->njobs + (size_t)nnames + 1, sizeof *selected);
	if (nnames > 0) {
		for (int i = 0; i < nnames; i++) {
			struct job_def *def = cfg_find_job(cfg, names[i]);
			if (def == NULL) {
				fprintf(stderr, "jobrund: %s: no job named '%s'\n", cfg->file,
					names[i]);
				free(selected);
				cfg_free(cfg);
				return 2;
			}
			selected[nsel++] = def;
		}
	} else {
		for (size_t i = 0; i < cfg->njobs; i++)
			if (cfg->jobs[i].enabled)
				selected[nsel++] = &cfg->jobs[i];
	}

	/* Plugins: every problem is printed, but only the selected jobs'
	 * problems stop us. */
	cfg_load_plugins(cfg, &errs);
	for (size_t i = 0; i < errs.n; i++)
		fprintf(stderr, "%s\n", errs.msgs[i]);
	for (size_t i = 0; i < nsel; i++)
		if (selected[i]->plugin == NULL)
			broken = true;
	errlist_free(&errs);
	if (broken) {
		free(selected);
		cfg_free(cfg);
		return 1;
	}
	if (nsel == 0)
		fprintf(stderr, "jobrund: %s: no enabled job to run\n", cfg->file);

	if (loop_init() == -1)
		fatal("epoll_create1");
	loop_signals(on_signal, &st);
	reaper_init();
	factory_apply(cfg, false);
	tpool_setup();
	hooks.task_done = print_result;
	hooks.run_done = run_ended;
	hooks.arg = &st;
	run_set_hooks(&hooks);

	st.grace = cfg->shutdown_grace;
	st.rts = xcalloc(nsel + 1, sizeof *st.rts);
	st.nrts = nsel;
	st.runs_left = nsel;
	for (size_t i = 0; i < nsel; i++)
		st.rts[i] = jobrt_new(selected[i], cfg);
	for (size_t i = 0; i < nsel; i++)
		run_start(st.rts[i]);
	if (nsel > 0 && loop_run() == -1)
		return 1;

	loop_timer_remove(st.check);
	loop_timer_remove(st.deadline);
	rc = st.tasks_failed > 0 || st.interrupted ? 3 : 0;
	if (tpool_threads_alive() > 0) {
		/* A thread is still running plugin code: unloading the plugin
		 * under it would crash.  Leave as we are. */
		fflush(stdout);
		_exit(rc);
	}
	free(st.rts);
	free(selected);
	cfg_free(cfg);
	tpool_shutdown();
	factory_stop();
	loop_shutdown();
	reaper_shutdown();
	return rc;
}
