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
 * under the definition it started with.  Retired by a reload, a runtime
 * drains (its runs go on); retired at shutdown, its runs are cancelled.
 * Everything here runs in the main thread.
 *
 * Retries.  A task that ends `failed`, `timeout` or `crashed` is tried
 * again, up to the job's `retries` times, after retry_delay, doubled for
 * each further retry and capped at retry_max_delay: the task goes back to
 * its executor when a loop timer fires, and until then it keeps the result
 * of its last attempt.  Only the last attempt's result counts: the hooks
 * and observers hear of a task once, when it is over, with `attempt` set;
 * each failed attempt is logged.  A cancelled run retries nothing: a task
 * waiting for its retry ends with its last result at once.
 *
 * Run numbers count up per runtime from a start the front end gives
 * (jobrt_set_last_run_id: the daemon continues from the run history, so
 * that a job's run numbers stay unique across reloads and restarts).
 */
#include "config.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobrund.h"

/* Tasks written and handed to the executor at a time when a run starts. */
#define RUN_SUBMIT_SLICE 4096

struct run {
	struct jobrt *rt;
	uint64_t id;
	struct task *tasks;
	size_t ntasks, ndone, nfailed;
	double started;
	struct timespec wall_started;   /* CLOCK_REALTIME, for history */
	const char *trigger;            /* static: why it started */
	bool cancelled;                 /* jobrt_cancel reached it */
	struct run_observer obs;        /* this run's own; may be empty */
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
	void *owner;                    /* the front end's; not owned */
};

static struct run_hooks hooks;
static int nruntimes;
/* Observers of every run (run_observe): not owned. */
static const struct run_observer **observers;
static size_t nobservers;

void
run_set_hooks(const struct run_hooks *h)
{
	hooks = *h;
}

void
run_observe(const struct run_observer *obs)
{
	observers = xrealloc(observers, (nobservers + 1) * sizeof *observers);
	observers[nobservers++] = obs;
}

void
run_unobserve(const struct run_observer *obs)
{
	for (size_t i = 0; i < nobservers; i++) {
		if (observers[i] == obs) {
			memmove(&observers[i], &observers[i + 1],
				(nobservers - i - 1) * sizeof *observers);
			nobservers--;
			break;
		}
	}
	if (nobservers == 0) {
		free(observers);
		observers = NULL;
	}
}

/* Tell every observer of RUN, the global ones first, then its own. */
static void
notify_started(struct run *run)
{
	for (size_t i = 0; i < nobservers; i++)
		if (observers[i]->run_started)
			observers[i]->run_started(run->rt, run->id, run->ntasks,
						  observers[i]->arg);
	if (run->obs.run_started)
		run->obs.run_started(run->rt, run->id, run->ntasks, run->obs.arg);
}

static void
notify_task_done(struct run *run, const struct task_result *r)
{
	for (size_t i = 0; i < nobservers; i++)
		if (observers[i]->task_done)
			observers[i]->task_done(run->rt, r, observers[i]->arg);
	if (run->obs.task_done)
		run->obs.task_done(run->rt, r, run->obs.arg);
}

static void
notify_run_done(struct run *run, double wall)
{
	for (size_t i = 0; i < nobservers; i++)
		if (observers[i]->run_done)
			observers[i]->run_done(run->rt, run->id, run->ntasks,
					       run->nfailed, wall, observers[i]->arg);
	if (run->obs.run_done)
		run->obs.run_done(run->rt, run->id, run->ntasks, run->nfailed, wall,
				  run->obs.arg);
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

/* If its job asks for it (`prestart`, and enabled), start RT's pool now,
 * not at its first run, and keep it full. */
void
jobrt_prestart(struct jobrt *rt)
{
	if (!rt->def->prestart || !rt->def->enabled)
		return;
	if (rt->tpool)
		tpool_prestart(rt->tpool);
	else if (rt->sup)
		sup_prestart(rt->sup);
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

void
jobrt_set_last_run_id(struct jobrt *rt, uint64_t id)
{
	rt->last_run_id = id;
}

uint64_t
jobrt_last_run_id(const struct jobrt *rt)
{
	return rt->last_run_id;
}

void
jobrt_set_owner(struct jobrt *rt, void *owner)
{
	rt->owner = owner;
}

void *
jobrt_owner(const struct jobrt *rt)
{
	return rt->owner;
}

bool
jobrt_retired(const struct jobrt *rt)
{
	return rt->retired;
}

struct tpool *
jobrt_tpool(const struct jobrt *rt)
{
	return rt->tpool;
}

struct sup_pool *
jobrt_sup(const struct jobrt *rt)
{
	return rt->sup;
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

void
jobrt_drain(struct jobrt *rt)
{
	rt->retired = true;
	if (rt->nruns == 0)
		jobrt_destroy(rt);
}

static void
task_fail_now(struct task *t, enum task_status st, const char *error)
{
	t->result.status = st;
	t->result.error = xstrdup(error);
	result_set_output(&t->result, "", 0);
	clock_gettime(CLOCK_REALTIME, &t->result.started);
	t->result.pid = getpid();
	run_task_done(t);
}

static void run_finish(struct run *run);

/* Hand T to its job's executor (which may complete it at once). */
static void
task_submit(struct jobrt *rt, struct task *t)
{
	if (rt->def->mode == MODE_THREAD && rt->tpool == NULL)
		task_fail_now(t, TASK_FAILED, rt->init_error);
	else if (rt->def->mode == MODE_THREAD)
		tpool_submit(rt->tpool, t);
	else
		sup_submit(rt->sup, t);
}

static void
run_info_fill(const struct run *run, struct run_info *ri)
{
	memset(ri, 0, sizeof *ri);
	ri->job = run->rt->def->name;
	ri->id = run->id;
	ri->trigger = run->trigger;
	ri->started = run->wall_started;
	ri->ntasks = run->ntasks;
	ri->cancelled = run->cancelled;
}

uint64_t
run_start(struct jobrt *rt)
{
	return run_start_ex(rt, "manual", NULL);
}

uint64_t
run_start_observed(struct jobrt *rt, const struct run_observer *obs)
{
	return run_start_ex(rt, "manual", obs);
}

uint64_t
run_start_ex(struct jobrt *rt, const char *trigger, const struct run_observer *obs)
{
	struct job_def *def = rt->def;
	struct run *run = xcalloc(1, sizeof *run);
	struct run_info ri;
	uint64_t id;

	run->rt = rt;
	run->id = id = ++rt->last_run_id;
	run->ntasks = def->has_inputs ? def->ninputs : 1;
	run->tasks = xcalloc(run->ntasks ? run->ntasks : 1, sizeof *run->tasks);
	run->started = mono_now();
	clock_gettime(CLOCK_REALTIME, &run->wall_started);
	run->trigger = trigger ? trigger : "manual";
	if (obs)
		run->obs = *obs;
	run->next = rt->runs;
	rt->runs = run;
	rt->nruns++;
	log_info("job %s: run %" PRIu64 " started (%s): %zu task%s, %s mode, %d worker%s",
		 def->name, id, run->trigger, run->ntasks, run->ntasks == 1 ? "" : "s",
		 mode_name(def->mode), def->workers, def->workers == 1 ? "" : "s");
	if (hooks.run_begun) {
		run_info_fill(run, &ri);
		hooks.run_begun(rt, &ri, hooks.arg);
	}
	notify_started(run);

	if (run->ntasks == 0) {
		/* `inputs = []`: a run with nothing to do ends at once. */
		run_finish(run);
		return id;
	}
	/* Fill and submit a slice at a time, so that the executor starts on
	 * the first tasks while the rest are still being written (a run of
	 * 200,000 tasks is 40 MB of fresh memory).  The run cannot end before
	 * its last task is submitted, which must be the last thing here: the
	 * run, and even the runtime, may be gone after it. */
	struct task *tasks = run->tasks;
	struct tpool *tp = def->mode == MODE_THREAD ? rt->tpool : NULL;
	for (size_t from = 0, n = run->ntasks; from < n; ) {
		size_t to = n - from > RUN_SUBMIT_SLICE ? from + RUN_SUBMIT_SLICE : n;

		for (size_t i = from; i < to; i++) {
			struct task *t = &tasks[i];
			t->run = run;
			t->result.job = def->name;
			t->result.run = id;
			t->result.index = i;
			t->result.attempt = 1;
			t->result.input = def->has_inputs ? def->inputs[i] : NULL;
			t->result.mode = def->mode;
			t->result.exit_code = -1;
		}
		if (tp != NULL)
			tpool_submit_many(tp, &tasks[from], to - from);
		else if (def->mode == MODE_PROCESS)
			sup_submit_many(rt->sup, &tasks[from], to - from);
		else
			for (size_t i = from; i < to; i++)
				task_submit(rt, &tasks[i]);
		from = to;
	}
	return id;
}

static void
run_finish(struct run *run)
{
	struct jobrt *rt = run->rt;
	struct run **pp;
	double wall = mono_now() - run->started;

	struct run_info ri;

	for (pp = &rt->runs; *pp != run; pp = &(*pp)->next)
		;
	*pp = run->next;
	/* No process of a job outlives its run: when this was the job's last
	 * active run, kill what its tasks left behind — before the hooks,
	 * which may start the next run (overlap = queue or replace). */
	if (rt->nruns == 1 && rt->sup)
		sup_run_ended(rt->sup);
	log_msg(run->nfailed ? LOG_NOTICE : LOG_INFO,
		"job %s: run %" PRIu64 " finished in %.3fs: %zu ok, %zu not ok%s",
		rt->def->name, run->id, wall, run->ntasks - run->nfailed, run->nfailed,
		run->cancelled ? " (cancelled)" : "");
	/* The hook may retire the runtime: the run still counts until the
	 * hook returns, so only this function frees it. */
	if (hooks.run_ended) {
		run_info_fill(run, &ri);
		clock_gettime(CLOCK_REALTIME, &ri.ended);
		ri.wall_s = wall;
		ri.nfailed = run->nfailed;
		ri.nok = run->ntasks - run->nfailed;
		ri.tasks = run->tasks;
		hooks.run_ended(rt, &ri, hooks.arg);
	}
	if (hooks.run_done)
		hooks.run_done(rt, run->id, run->ntasks, run->nfailed, wall, hooks.arg);
	notify_run_done(run, wall);
	rt->nruns--;
	for (size_t i = 0; i < run->ntasks; i++)
		result_clear(&run->tasks[i].result);
	free(run->tasks);
	free(run);
	if (rt->retired && rt->nruns == 0)
		jobrt_destroy(rt);
}

/* Should T, just ended, be tried again? */
static bool
task_retry_due(struct task *t)
{
	const struct run *run = t->run;

	switch (t->result.status) {
	case TASK_FAILED:
	case TASK_TIMEOUT:
	case TASK_CRASHED:
		break;
	default:
		return false;
	}
	/* A thread-mode job with a thread stuck in the plugin runs nothing
	 * more: a retry would only turn this timeout into `skipped`. */
	return t->result.attempt <= run->rt->def->retries && !run->cancelled &&
	    !atomic_load((_Atomic int *)&t->cancel) &&
	    !(run->rt->tpool != NULL && tpool_stuck(run->rt->tpool));
}

/* The wait before retry number N (1-based): retry_delay doubled N - 1
 * times, capped at retry_max_delay. */
static double
retry_delay(const struct job_def *def, int n)
{
	double d = def->retry_delay_s;

	for (int i = 1; i < n && d < def->retry_max_delay_s; i++)
		d *= 2;
	return d < def->retry_max_delay_s ? d : def->retry_max_delay_s;
}

static void
retry_fire(void *arg)
{
	struct task *t = arg;
	struct task_result *r = &t->result;

	loop_timer_remove(t->retry_timer);
	t->retry_timer = NULL;
	/* The last attempt's result counted until now: start afresh. */
	result_clear(r);
	r->status = TASK_OK;
	r->pid = 0;
	memset(&r->started, 0, sizeof r->started);
	r->wall_s = r->cpu_s = 0;
	r->signal = 0;
	r->exit_code = -1;
	r->core_dumped = false;
	r->attempt++;
	t->next = NULL;
	t->exec_priv = NULL;
	atomic_store((_Atomic int *)&t->cancel, 0);
	task_submit(t->run->rt, t);
}

static void
retry_schedule(struct task *t)
{
	const struct job_def *def = t->run->rt->def;
	double delay = retry_delay(def, t->result.attempt);

	if (log_enabled(LOG_NOTICE)) {
		char *line = result_summary(&t->result);
		log_msg(LOG_NOTICE, "%s: retry %d of %d in %.3gs", line, t->result.attempt,
			def->retries, delay);
		free(line);
	}
	t->exec_priv = NULL;
	t->retry_timer = loop_timer_add(delay, 0, retry_fire, t);
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
			run->rt->def->name, run->id, t->result.index);
		return;
	}
	if (t->retry_timer == NULL && task_retry_due(t)) {
		retry_schedule(t);
		return;
	}
	t->done = true;
	if (t->result.output == NULL)
		result_set_output(&t->result, "", 0);
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
	notify_task_done(run, &t->result);
	if (run->ndone == run->ntasks)
		run_finish(run);
}

void
jobrt_cancel(struct jobrt *rt, bool now)
{
	for (struct run *run = rt->runs, *next; run; run = next) {
		next = run->next;
		run->cancelled = true;
		/* Cancelling may complete tasks (and free the run) at once:
		 * look at the count, not the run, after the last one. */
		size_t n = run->ntasks, left = run->ntasks - run->ndone;
		bool in_pool = false;
		for (size_t i = 0; i < n && left > 0; i++) {
			struct task *t = &run->tasks[i];
			if (t->done)
				continue;
			left--;
			if (t->retry_timer != NULL) {
				/* Waiting for a retry: its last attempt counts. */
				log_msg(LOG_NOTICE, "job %s: run %" PRIu64 " task %zu: "
					"retry cancelled", rt->def->name, run->id,
					t->result.index);
				loop_timer_remove(t->retry_timer);
				t->retry_timer = NULL;
				run_task_done(t);
			} else if (rt->tpool) {
				/* Flagged here, taken out of the pool below in
				 * one pass: the run outlives this loop, since
				 * this task is not done. */
				atomic_store((_Atomic int *)&t->cancel, 1);
				in_pool = true;
			} else if (rt->sup) {
				sup_cancel(rt->sup, t, now);
			}
		}
		if (in_pool)
			tpool_cancel_run(rt->tpool, run);
	}
}

bool
run_all_quiet(void)
{
	if (sup_live_workers() != 0 || sup_pools_stopping() != 0 ||
	    tpool_threads_alive() != 0)
		return false;
	/* The workers are gone: what they left behind goes too. */
	if (reaper_adopted() > 0) {
		reaper_kill_all();
		return false;
	}
	return true;
}
