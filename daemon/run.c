/*
 * run.c - a job's runtime and its runs.
 *
 * A run is one execution of a job: one task per element of `inputs` (or
 * a single task without input), handed to the job's executor (a thread
 * pool or a pool of worker processes) and collected as each finishes, in
 * whatever order they finish.  Every task ends with exactly one result:
 * the executors guarantee that, and run.c checks it.
 *
 * A runtime (struct jobrt) lives as long as its job definition is in use;
 * it is "retired" when the job goes away (shutdown, reload) and freed
 * only when its last run has ended, so a running run always finishes
 * under the definition it started with.  Everything here runs in the main
 * thread.
 */
#include "config.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobrund.h"

struct run {
	struct jobrt *rt;
	uint64_t id;
	struct task *tasks;
	size_t ntasks, ndone, nfailed;
	double started;
	struct run *next;
};

struct jobrt {
	struct job_def *def;
	const struct jr_config *cfg;
	struct tpool *tpool;            /* MODE_THREAD */
	struct sup_pool *sup;           /* MODE_PROCESS */
	char *init_error;               /* thread-mode plugin init failure */
	uint64_t last_run_id;
	struct run *runs;
	int nruns;
	bool retired;
};

static struct run_hooks hooks;
static int nruntimes;

void
run_set_hooks(const struct run_hooks *h)
{
	hooks = *h;
}

struct jobrt *
jobrt_new(struct job_def *def, const struct jr_config *cfg)
{
	struct jobrt *rt = xcalloc(1, sizeof *rt);
	char err[2048];

	rt->def = def;
	rt->cfg = cfg;
	if (def->mode == MODE_THREAD) {
		rt->tpool = tpool_new(def, cfg, err, sizeof err);
		if (rt->tpool == NULL) {
			rt->init_error = xstrdup(err);
			log_msg(LOG_ERR, "job %s: %s", def->name, err);
		}
	} else {
		rt->sup = sup_new(def, cfg);
	}
	nruntimes++;
	return rt;
}

struct job_def *
jobrt_def(const struct jobrt *rt)
{
	return rt->def;
}

const struct jr_config *
jobrt_config(const struct jobrt *rt)
{
	return rt->cfg;
}

int
jobrt_active_runs(const struct jobrt *rt)
{
	return rt->nruns;
}

int
jobrt_count(void)
{
	return nruntimes;
}

static void
jobrt_destroy(struct jobrt *rt)
{
	if (rt->tpool)
		tpool_free(rt->tpool);
	if (rt->sup)
		sup_free(rt->sup, rt->cfg->shutdown_grace);
	free(rt->init_error);
	if (hooks.rt_freed)
		hooks.rt_freed(rt->cfg, hooks.arg);
	free(rt);
	nruntimes--;
}

void
jobrt_retire(struct jobrt *rt, bool now)
{
	/* Cancel before marking retired: cancelling may end runs at once,
	 * and the last one to end frees a retired runtime. */
	jobrt_cancel(rt, now);
	rt->retired = true;
	if (rt->nruns == 0)
		jobrt_destroy(rt);
}

static void
task_fail_now(struct task *t, enum task_status st, const char *error)
{
	t->result.status = st;
	t->result.error = xstrdup(error);
	t->result.output = xstrdup("");
	clock_gettime(CLOCK_REALTIME, &t->result.started);
	t->result.pid = getpid();
	run_task_done(t);
}

static void run_finish(struct run *run);

uint64_t
run_start(struct jobrt *rt)
{
	struct job_def *def = rt->def;
	struct run *run = xcalloc(1, sizeof *run);
	uint64_t id;

	run->rt = rt;
	run->id = id = ++rt->last_run_id;
	run->ntasks = def->has_inputs ? def->ninputs : 1;
	run->tasks = xcalloc(run->ntasks ? run->ntasks : 1, sizeof *run->tasks);
	run->started = mono_now();
	run->next = rt->runs;
	rt->runs = run;
	rt->nruns++;
	log_info("job %s: run %" PRIu64 " started: %zu task%s, %s mode, %d worker%s",
		 def->name, id, run->ntasks, run->ntasks == 1 ? "" : "s",
		 mode_name(def->mode), def->workers, def->workers == 1 ? "" : "s");

	if (run->ntasks == 0) {
		/* `inputs = []`: a run with nothing to do ends at once. */
		run_finish(run);
		return id;
	}
	for (size_t i = 0; i < run->ntasks; i++) {
		struct task *t = &run->tasks[i];
		t->run = run;
		t->index = i;
		t->input = def->has_inputs ? def->inputs[i] : NULL;
		t->result.job = def->name;
		t->result.run = id;
		t->result.index = i;
		t->result.input = t->input;
		t->result.mode = def->mode;
		t->result.exit_code = -1;
	}
	/* Submit after filling every task: a task may complete (and end the
	 * run) during submission when its executor fails it at once. */
	for (size_t i = 0; i < run->ntasks; i++) {
		struct task *t = &run->tasks[i];
		if (def->mode == MODE_THREAD && rt->tpool == NULL)
			task_fail_now(t, TASK_FAILED, rt->init_error);
		else if (def->mode == MODE_THREAD)
			tpool_submit(rt->tpool, t);
		else
			sup_submit(rt->sup, t);
	}
	return id;
}

static void
run_finish(struct run *run)
{
	struct jobrt *rt = run->rt;
	struct run **pp;
	double wall = mono_now() - run->started;

	for (pp = &rt->runs; *pp != run; pp = &(*pp)->next)
		;
	*pp = run->next;
	log_msg(run->nfailed ? LOG_NOTICE : LOG_INFO,
		"job %s: run %" PRIu64 " finished in %.3fs: %zu ok, %zu not ok",
		rt->def->name, run->id, wall, run->ntasks - run->nfailed, run->nfailed);
	/* The hook may retire the runtime: the run still counts until the
	 * hook returns, so only this function frees it. */
	if (hooks.run_done)
		hooks.run_done(rt, run->id, run->ntasks, run->nfailed, wall, hooks.arg);
	rt->nruns--;
	for (size_t i = 0; i < run->ntasks; i++)
		result_clear(&run->tasks[i].result);
	free(run->tasks);
	free(run);
	if (rt->retired && rt->nruns == 0)
		jobrt_destroy(rt);
}

void
run_task_done(struct task *t)
{
	struct run *run;

	if (t == NULL)
		return;
	run = t->run;
	if (t->done) {
		/* An executor bug would lose or duplicate results: refuse
		 * loudly rather than count a task twice. */
		log_msg(LOG_ERR, "job %s: run %" PRIu64 " task %zu completed twice (ignored)",
			run->rt->def->name, run->id, t->index);
		return;
	}
	t->done = true;
	if (t->result.output == NULL)
		t->result.output = xstrdup("");
	run->ndone++;
	if (t->result.status != TASK_OK)
		run->nfailed++;
	if (log_enabled(t->result.status == TASK_OK ? LOG_INFO : LOG_NOTICE)) {
		char *line = result_summary(&t->result);
		log_msg(t->result.status == TASK_OK ? LOG_INFO : LOG_NOTICE, "%s", line);
		free(line);
	}
	if (hooks.task_done)
		hooks.task_done(&t->result, hooks.arg);
	if (run->ndone == run->ntasks)
		run_finish(run);
}

void
jobrt_cancel(struct jobrt *rt, bool now)
{
	for (struct run *run = rt->runs, *next; run; run = next) {
		next = run->next;
		/* Cancelling may complete tasks (and free the run) at once:
		 * look at the count, not the run, after the last one. */
		size_t n = run->ntasks, left = run->ntasks - run->ndone;
		for (size_t i = 0; i < n && left > 0; i++) {
			struct task *t = &run->tasks[i];
			if (t->done)
				continue;
			left--;
			if (rt->tpool)
				tpool_cancel(rt->tpool, t);
			else if (rt->sup)
				sup_cancel(rt->sup, t, now);
		}
	}
}
