/*
 * sched.c - when jobs run: one entry per active job (enabled, plugin
 * loaded) with its schedule, its overlap policy and its counters; the
 * timers that fire them; catch-up after downtime; and how a reloaded
 * config is applied, as a diff.
 *
 * Schedules.
 *   @start      once, right after start-up, and after a reload that adds
 *               or changes the job;
 *   @every D    D apart on CLOCK_MONOTONIC, from absolute due times (each
 *               one the previous plus D), so nothing drifts and wall-clock
 *               jumps do not matter; periods missed by a stalled loop fire
 *               once;
 *   cron        at the times cron_next_fire gives, in the job's timezone,
 *               on CLOCK_REALTIME;
 *   @manual     never by itself (jobrunctl run).
 * All due times sit in two heaps (monotonic and wall-clock), each served
 * by a single timer armed for its earliest entry: ten thousand jobs cost
 * two timer descriptors, not ten thousand.  A timer callback fires at most
 * FIRE_BATCH jobs and comes back on the next loop iteration for the rest.
 *
 * Cron and the wall clock.  Each cron entry keeps the scheduled time it
 * last handled (last_fire), also saved in the history database, and only
 * fires for later ones.  The wall-clock timer is armed with
 * TFD_TIMER_CANCEL_ON_SET, so a clock step wakes it: a cron time that a
 * forward jump skipped is then due and fires once (however many were
 * skipped), and its next time is computed from the new now; after a
 * backward jump the due times stay where they were, later than the new
 * now, so nothing repeats.  A backward jump of more than BACK_JUMP_RESET
 * is a clock being corrected, not a wobble: due times are recomputed from
 * the new now (what cronie does past three hours).
 *
 * Catch-up.  At start-up, a cron job whose next time after its saved
 * last_fire has passed missed runs while jobrund was down: `catchup =
 * "once"` runs it once now, "none" (the default) logs the miss.  The
 * saved time then becomes now.
 *
 * Overlap, when a firing finds runs of the job still active (runs of an
 * older definition draining after a reload included): skip it (counted
 * and logged); queue it, at most one pending run that starts when the
 * last active one ends; replace, cancel the active runs and start when
 * they have ended; allow, up to max_concurrent_runs at once (a firing
 * past that is skipped and counted).
 *
 * Reload as a diff (sched_apply).  Entries are matched by name.  A job
 * whose definition is the same in every field (settings_text and the
 * loaded plugin object included; the line number aside) is unchanged: it
 * keeps its entry, runtime, workers, timers, counters and run numbers,
 * and its runtime keeps pointing at its old definition, whose config stays
 * alive for it (daemon.c counts runtimes per config).  A changed job's
 * runtime drains (its runs finish under the old definition) and a new
 * one is made; its schedule is kept when the schedule did not change.  A
 * removed job's entry leaves the schedule at once and is freed when its
 * last run ends.  New runtimes are made in slices of WARM_SLICE_MS per loop
 * iteration (or at once when a job needs one), so applying ten thousand
 * changed jobs does not stall the loop.
 *
 * Everything here runs in the main thread.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "jobrund.h"

#define FIRE_BATCH              256     /* firings per timer callback */
#define WARM_SLICE_MS           20.0    /* runtime creation per iteration */
#define BACK_JUMP_RESET         (3 * 3600.0)
#define NO_HEAP                 SIZE_MAX

struct heap;

struct sched_job {
	char *name;                     /* owned */
	struct job_def *def;            /* the newest config's, or rt's */
	const struct jr_config *cfg;    /* DEF's config */
	struct jobrt *rt;               /* NULL until made */
	struct jobrt **draining;        /* retired runtimes with runs left */
	size_t ndraining;
	int nactive;                    /* runs of rt and draining */
	bool removed;                   /* gone from the config */
	bool seen;                      /* sched_apply: in the new config */
	bool cancelling;                /* replace: cancelled, waiting */
	bool in_cancel;                 /* inside cancel_all */

	/* The schedule. */
	struct heap *heap;              /* NULL: not scheduled */
	size_t heap_idx;
	double due;                     /* @start, @every: CLOCK_MONOTONIC */
	time_t due_wall;                /* cron: CLOCK_REALTIME */
	time_t last_fire;               /* cron: last scheduled time handled */

	/* A run waiting for the active ones (queue, replace). */
	bool pending;
	const char *pending_trigger;
	struct run_observer pending_obs;
	bool pending_observed;

	uint64_t skipped;
	uint64_t last_run_id;           /* the highest run number started */
	struct sched_job *hnext;        /* the name table's chain */
};

struct heap {
	struct sched_job **v;
	size_t n, cap;
	bool wall;                      /* keyed by due_wall, else due */
	struct loop_timer *timer;
	const char *what;
};

static struct {
	void (*rt_made)(const struct jr_config *cfg);
	struct sched_job **jobs;        /* the active ones, in config order */
	size_t njobs;
	struct sched_job **table;       /* by name: active and removed */
	size_t table_size, nentries;
	struct heap mono, wall;
	double wall_offset;             /* realtime - monotonic, last seen */
	struct loop_timer *warm_timer;
	size_t warm_next;               /* index in jobs */
	struct jobrt **retiring;        /* idle runtimes to retire, by slices */
	size_t nretiring, retiring_cap;
	bool stopping;
} s = {
	.mono = { .what = "monotonic" },
	.wall = { .wall = true, .what = "wall-clock" },
};

static void mono_fired(void *arg);
static void wall_fired(void *arg);

static double
real_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts_to_s(&ts);
}

static char *
fmt_time(time_t t, char *buf, size_t len)
{
	struct tm tm;

	localtime_r(&t, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M:%S %Z", &tm);
	return buf;
}

/* ------------------------------------------------------------------ */
/* The name table                                                      */
/* ------------------------------------------------------------------ */

static size_t
name_hash(const char *name)
{
	uint64_t h = 14695981039346656037ULL;

	for (; *name != '\0'; name++)
		h = (h ^ (unsigned char)*name) * 1099511628211ULL;
	return (size_t)h;
}

static struct sched_job *
table_get(const char *name)
{
	if (s.table_size == 0)
		return NULL;
	for (struct sched_job *e = s.table[name_hash(name) % s.table_size]; e;
	     e = e->hnext)
		if (strcmp(e->name, name) == 0)
			return e;
	return NULL;
}

static void
table_put(struct sched_job *e)
{
	size_t b;

	if (s.nentries + 1 > s.table_size) {
		size_t size = s.table_size ? s.table_size * 2 : 64;
		struct sched_job **t = xcalloc(size, sizeof *t);

		for (size_t i = 0; i < s.table_size; i++) {
			for (struct sched_job *x = s.table[i], *next; x; x = next) {
				next = x->hnext;
				b = name_hash(x->name) % size;
				x->hnext = t[b];
				t[b] = x;
			}
		}
		free(s.table);
		s.table = t;
		s.table_size = size;
	}
	b = name_hash(e->name) % s.table_size;
	e->hnext = s.table[b];
	s.table[b] = e;
	s.nentries++;
}

static void
table_del(struct sched_job *e)
{
	struct sched_job **pp = &s.table[name_hash(e->name) % s.table_size];

	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	s.nentries--;
}

/* ------------------------------------------------------------------ */
/* The heaps and their timers                                          */
/* ------------------------------------------------------------------ */

static double
heap_key(const struct heap *hp, const struct sched_job *e)
{
	return hp->wall ? (double)e->due_wall : e->due;
}

static void
heap_swap(struct heap *hp, size_t a, size_t b)
{
	struct sched_job *t = hp->v[a];

	hp->v[a] = hp->v[b];
	hp->v[b] = t;
	hp->v[a]->heap_idx = a;
	hp->v[b]->heap_idx = b;
}

static void
heap_up(struct heap *hp, size_t i)
{
	while (i > 0 && heap_key(hp, hp->v[(i - 1) / 2]) > heap_key(hp, hp->v[i])) {
		heap_swap(hp, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void
heap_down(struct heap *hp, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < hp->n && heap_key(hp, hp->v[l]) < heap_key(hp, hp->v[m]))
			m = l;
		if (r < hp->n && heap_key(hp, hp->v[r]) < heap_key(hp, hp->v[m]))
			m = r;
		if (m == i)
			return;
		heap_swap(hp, i, m);
		i = m;
	}
}

static void
heap_push(struct heap *hp, struct sched_job *e)
{
	if (hp->n == hp->cap) {
		hp->cap = hp->cap ? hp->cap * 2 : 64;
		hp->v = xrealloc(hp->v, hp->cap * sizeof *hp->v);
	}
	if (hp->n == 0 && hp->wall)
		s.wall_offset = real_now() - mono_now();
	e->heap = hp;
	e->heap_idx = hp->n;
	hp->v[hp->n++] = e;
	heap_up(hp, e->heap_idx);
}

static void
unschedule(struct sched_job *e)
{
	struct heap *hp = e->heap;
	size_t i = e->heap_idx;

	if (hp == NULL)
		return;
	e->heap = NULL;
	e->heap_idx = NO_HEAP;
	if (i != --hp->n) {
		hp->v[i] = hp->v[hp->n];
		hp->v[i]->heap_idx = i;
		heap_down(hp, i);
		heap_up(hp, i);
	}
}

/* Arm HP's timer for its earliest entry (none when empty or stopping). */
static void
heap_arm(struct heap *hp)
{
	loop_timer_remove(hp->timer);
	hp->timer = NULL;
	if (hp->n == 0 || s.stopping)
		return;
	if (hp->wall)
		hp->timer = loop_timer_at(hp->v[0]->due_wall, wall_fired, hp);
	else
		hp->timer = loop_timer_add(hp->v[0]->due - mono_now(), 0, mono_fired, hp);
}

/* ------------------------------------------------------------------ */
/* Runtimes                                                            */
/* ------------------------------------------------------------------ */

/* E's runtime, made now if it has none yet. */
static struct jobrt *
entry_rt(struct sched_job *e)
{
	uint64_t last;

	if (e->rt != NULL || e->removed)
		return e->rt;
	e->rt = jobrt_new(e->def, e->cfg);
	jobrt_set_owner(e->rt, e);
	jobrt_prestart(e->rt);
	if (s.rt_made)
		s.rt_made(e->cfg);
	/* Run numbers go on from the history and from older runtimes. */
	last = history_last_run_id(e->name);
	if (last < e->last_run_id)
		last = e->last_run_id;
	jobrt_set_last_run_id(e->rt, last);
	return e->rt;
}

/*
 * The slow side of a reload, a slice of time per loop iteration: retire
 * the idle runtimes of changed and removed jobs (stopping an executor
 * costs a few system calls: ten thousand of them are half a second), then
 * make the runtimes still missing.
 */
static void
warm_up(void *arg)
{
	double t0 = mono_now();

	(void)arg;
	loop_timer_remove(s.warm_timer);
	s.warm_timer = NULL;
	if (s.stopping)
		return;
	while (s.nretiring > 0) {
		jobrt_drain(s.retiring[--s.nretiring]);
		if ((mono_now() - t0) * 1000 >= WARM_SLICE_MS)
			goto more;
	}
	while (s.warm_next < s.njobs) {
		entry_rt(s.jobs[s.warm_next++]);
		if ((mono_now() - t0) * 1000 >= WARM_SLICE_MS)
			break;
	}
	if (s.warm_next >= s.njobs)
		return;
more:
	s.warm_timer = loop_timer_add(0, 0, warm_up, NULL);
}

static void
warm_up_start(void)
{
	s.warm_next = 0;
	if (s.warm_timer == NULL && !s.stopping)
		s.warm_timer = loop_timer_add(0, 0, warm_up, NULL);
}

/* Retire E's runtime RT without cancelling its runs: keep it while they
 * go on; an idle one is retired in a later slice (warm_up). */
static void
drain(struct sched_job *e, struct jobrt *rt)
{
	if (jobrt_active_runs(rt) > 0) {
		e->draining = xrealloc(e->draining,
		    (e->ndraining + 1) * sizeof *e->draining);
		e->draining[e->ndraining++] = rt;
		jobrt_drain(rt);
		return;
	}
	jobrt_set_owner(rt, NULL);
	if (s.nretiring == s.retiring_cap) {
		s.retiring_cap = s.retiring_cap ? s.retiring_cap * 2 : 64;
		s.retiring = xrealloc(s.retiring, s.retiring_cap * sizeof *s.retiring);
	}
	s.retiring[s.nretiring++] = rt;
}

/* ------------------------------------------------------------------ */
/* Runs and overlap                                                    */
/* ------------------------------------------------------------------ */

/* A queued run that will not start: its observer must hear it. */
static void
drop_pending(struct sched_job *e, const char *why)
{
	struct run_observer obs = e->pending_obs;
	bool observed = e->pending_observed;

	if (!e->pending)
		return;
	log_msg(LOG_NOTICE, "job %s: the queued run is dropped: %s", e->name, why);
	e->pending = false;
	e->pending_observed = false;
	memset(&e->pending_obs, 0, sizeof e->pending_obs);
	if (observed && obs.run_done)
		obs.run_done(NULL, 0, 0, 0, 0, obs.arg);
}

static uint64_t
start_run(struct sched_job *e, const char *trigger, const struct run_observer *obs)
{
	struct jobrt *rt = entry_rt(e);

	return run_start_ex(rt, trigger, obs);
}

/* Cancel the runs of the drained runtimes in E's list.  Cancelling may
 * end runs at once, and a drained runtime with them: each is cancelled
 * from a copy of the list, and not touched after.  A removed E may be
 * freed by it too: the caller must not touch a removed E afterwards. */
static void
cancel_drained(struct sched_job *e, bool now)
{
	size_t n = e->ndraining;
	struct jobrt **rts;

	if (n == 0)
		return;
	rts = xcalloc(n, sizeof *rts);
	memcpy(rts, e->draining, n * sizeof *rts);
	for (size_t i = 0; i < n; i++)
		jobrt_cancel(rts[i], now);
	free(rts);
}

static void pending_start(struct sched_job *e);

/* Cancel every active run of E (not removed), its older definitions'
 * included; the number of runs that were active. */
static int
cancel_all(struct sched_job *e, bool now)
{
	int n = e->nactive;

	/* A queued run starts after, not while runs are being cancelled:
	 * it would be cancelled too. */
	e->in_cancel = true;
	cancel_drained(e, now);
	if (e->rt)
		jobrt_cancel(e->rt, now);
	e->in_cancel = false;
	if (e->nactive == 0)
		pending_start(e);
	return n;
}

/* A firing of E's schedule (or a catch-up): start a run, or do what the
 * overlap policy says. */
static void
fire(struct sched_job *e, const char *trigger)
{
	const struct job_def *def = e->def;

	if (s.stopping || e->removed)
		return;
	if (e->nactive > 0) {
		switch (def->overlap) {
		case OVERLAP_SKIP:
			e->skipped++;
			log_msg(LOG_NOTICE, "job %s: previous run still active: run skipped "
				"(overlap = skip; %" PRIu64 " skipped so far)", e->name,
				e->skipped);
			return;
		case OVERLAP_QUEUE:
			if (e->pending) {
				e->skipped++;
				log_msg(LOG_NOTICE, "job %s: a run is already queued: this "
					"firing is merged into it (overlap = queue; %" PRIu64
					" skipped so far)", e->name, e->skipped);
			} else {
				log_msg(LOG_INFO, "job %s: previous run still active: run "
					"queued (overlap = queue)", e->name);
			}
			if (!e->pending)
				e->pending_trigger = trigger;
			e->pending = true;
			return;
		case OVERLAP_REPLACE:
			if (!e->pending)
				e->pending_trigger = trigger;
			e->pending = true;
			if (!e->cancelling) {
				log_msg(LOG_NOTICE, "job %s: cancelling the active run to start "
					"a new one (overlap = replace)", e->name);
				e->cancelling = true;
				cancel_all(e, false);
			}
			return;
		case OVERLAP_ALLOW:
			if (e->nactive < def->max_concurrent_runs)
				break;
			e->skipped++;
			log_msg(LOG_NOTICE, "job %s: %d runs active, max_concurrent_runs "
				"reached: run skipped (%" PRIu64 " skipped so far)", e->name,
				e->nactive, e->skipped);
			return;
		}
	}
	start_run(e, trigger, NULL);
}

/* ------------------------------------------------------------------ */
/* Schedules                                                           */
/* ------------------------------------------------------------------ */

/* Put E's cron schedule at its first time after BASE. */
static void
cron_arm(struct sched_job *e, time_t base)
{
	time_t next = cron_next_fire(e->def->cron, e->def->timezone, base);

	unschedule(e);
	if (next == (time_t)-1) {
		log_msg(LOG_WARNING, "job %s: schedule '%s' does not fire in the next "
			"five years%s%s", e->name, e->def->schedule,
			e->def->timezone ? " in " : "",
			e->def->timezone ? e->def->timezone : "");
		return;
	}
	e->due_wall = next;
	heap_push(&s.wall, e);
}

/* Is cron time LAST (saved) usable as a base from NOW: not from a clock
 * since corrected backwards by more than BACK_JUMP_RESET? */
static bool
last_fire_usable(time_t last, time_t now)
{
	return last > 0 && (double)last - (double)now <= BACK_JUMP_RESET;
}

/* The cron side of start-up: catch up, or say what was missed. */
static void
cron_startup(struct sched_job *e, time_t now)
{
	char when[64];
	time_t last, missed;

	if (history_last_fire(e->name, &last) == -1 || !last_fire_usable(last, now)) {
		history_set_last_fire(e->name, now);
		e->last_fire = now;
		return;
	}
	e->last_fire = last > now ? last : now;
	missed = cron_next_fire(e->def->cron, e->def->timezone, last);
	if (missed != (time_t)-1 && missed <= now) {
		fmt_time(missed, when, sizeof when);
		if (e->def->catchup == CATCHUP_ONCE) {
			log_msg(LOG_NOTICE, "job %s: missed its run due at %s while "
				"jobrund was down: running it once now (catchup = once)",
				e->name, when);
			fire(e, "catchup");
		} else {
			log_msg(LOG_NOTICE, "job %s: missed its run due at %s while "
				"jobrund was down (catchup = none: not run)", e->name, when);
		}
	}
	if (e->last_fire != last)
		history_set_last_fire(e->name, e->last_fire);
}

/* Put a new (or rescheduled) entry on its schedule. */
static void
schedule_init(struct sched_job *e, bool startup)
{
	time_t now = time(NULL);

	unschedule(e);
	switch (e->def->sched) {
	case SCHED_START:
		e->due = mono_now();
		heap_push(&s.mono, e);
		break;
	case SCHED_EVERY:
		e->due = mono_now() + e->def->every_s;
		heap_push(&s.mono, e);
		break;
	case SCHED_CRON:
		if (startup) {
			cron_startup(e, now);
		} else {
			/* Added or changed: times up to now count as handled,
			 * and a minute already fired is not fired again. */
			if (e->last_fire == 0)
				(void)history_last_fire(e->name, &e->last_fire);
			if (!last_fire_usable(e->last_fire, now) || e->last_fire < now) {
				e->last_fire = now;
				history_set_last_fire(e->name, now);
			}
		}
		cron_arm(e, e->last_fire);
		break;
	case SCHED_MANUAL:
		break;
	}
}

static void
mono_fired(void *arg)
{
	struct heap *hp = arg;
	double now = mono_now();
	int n = 0;

	loop_timer_remove(hp->timer);
	hp->timer = NULL;
	/* The runs' starts go to the history in one transaction. */
	history_batch_begin();
	/* A millisecond early is due: timerfds and mono_now() round apart. */
	while (hp->n > 0 && hp->v[0]->due <= now + 0.001 && n++ < FIRE_BATCH && !s.stopping) {
		struct sched_job *e = hp->v[0];

		unschedule(e);
		if (e->def->sched == SCHED_EVERY) {
			double every = e->def->every_s;

			/* The next period from the due time, not from now: no
			 * drift; periods a stalled loop missed fire once. */
			e->due += every;
			if (e->due <= now)
				e->due += ceil((now - e->due) / every + 1e-9) * every;
			heap_push(hp, e);
			fire(e, "schedule");
		} else {
			fire(e, "start");
		}
	}
	history_batch_end();
	heap_arm(hp);
}

static void
wall_fired(void *arg)
{
	struct heap *hp = arg;
	time_t now = time(NULL);
	double offset = real_now() - mono_now(), jump = offset - s.wall_offset;
	int n = 0;

	loop_timer_remove(hp->timer);
	hp->timer = NULL;
	s.wall_offset = offset;
	history_batch_begin();
	/* Set, or the system slept (the monotonic clock does not run then). */
	if (fabs(jump) >= 1.0) {
		log_msg(LOG_NOTICE, "the wall clock moved %s by %.0fs: cron schedules "
			"%s", jump > 0 ? "forward" : "back", fabs(jump),
			jump > 0 ? "skipped by the jump run once" :
			jump < -BACK_JUMP_RESET ? "start again from the new time" :
			"repeat nothing");
		if (jump < -BACK_JUMP_RESET) {
			for (size_t i = 0; i < s.njobs; i++) {
				struct sched_job *e = s.jobs[i];

				if (e->def->sched != SCHED_CRON)
					continue;
				e->last_fire = now;
				history_set_last_fire(e->name, now);
				cron_arm(e, now);
			}
		}
	}
	while (hp->n > 0 && hp->v[0]->due_wall <= now && n++ < FIRE_BATCH && !s.stopping) {
		struct sched_job *e = hp->v[0];
		time_t due = e->due_wall;

		if (due > e->last_fire) {
			e->last_fire = due;
			history_set_last_fire(e->name, due);
			fire(e, "schedule");
		}
		/* From now: the times a forward jump skipped are not run. */
		cron_arm(e, now > e->last_fire ? now : e->last_fire);
	}
	history_batch_end();
	heap_arm(hp);
}

/* ------------------------------------------------------------------ */
/* Applying a config                                                   */
/* ------------------------------------------------------------------ */

static bool
str_same(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static bool
strv_same(char *const *a, char *const *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!str_same(a[i], b[i]))
			return false;
	return true;
}

static bool
schedule_same(const struct job_def *a, const struct job_def *b)
{
	return a->sched == b->sched && str_same(a->schedule, b->schedule) &&
	    a->every_s == b->every_s && str_same(a->timezone, b->timezone);
}

/* Same plugin: the same object loaded (so the same file, unreplaced). */
static bool
plugin_same(const struct plugin *a, const struct plugin *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return loader_descriptor(a) == loader_descriptor(b) &&
	    str_same(loader_path(a), loader_path(b));
}

/*
 * Is B (of config CB) the same job as A (of CA), for a runtime made from
 * A?  Every field of the definition counts but the line it is on; of the
 * config's, those a runtime reads: plugin_dir and shutdown_grace.
 */
static bool
def_same(const struct job_def *a, const struct jr_config *ca,
	 const struct job_def *b, const struct jr_config *cb)
{
	return str_same(a->name, b->name) && str_same(a->plugin_name, b->plugin_name) &&
	    a->mode == b->mode && a->workers == b->workers && schedule_same(a, b) &&
	    a->has_inputs == b->has_inputs && a->ninputs == b->ninputs &&
	    strv_same(a->inputs, b->inputs, a->ninputs) &&
	    a->timeout_s == b->timeout_s && a->kill_grace_s == b->kill_grace_s &&
	    a->overlap == b->overlap && a->max_concurrent_runs == b->max_concurrent_runs &&
	    a->retries == b->retries && a->retry_delay_s == b->retry_delay_s &&
	    a->retry_max_delay_s == b->retry_max_delay_s && a->catchup == b->catchup &&
	    a->history_keep == b->history_keep && a->enabled == b->enabled &&
	    a->prestart == b->prestart &&
	    a->max_tasks_per_worker == b->max_tasks_per_worker &&
	    a->max_rss == b->max_rss &&
	    memcmp(a->rlimit, b->rlimit, sizeof a->rlimit) == 0 &&
	    str_same(a->user, b->user) && str_same(a->group, b->group) &&
	    a->uid == b->uid && a->gid == b->gid &&
	    a->has_env == b->has_env && a->nenv == b->nenv &&
	    strv_same(a->env, b->env, a->nenv) && str_same(a->cwd, b->cwd) &&
	    a->output_limit == b->output_limit &&
	    str_same(a->settings_text, b->settings_text) &&
	    plugin_same(a->plugin, b->plugin) &&
	    str_same(ca->plugin_dir, cb->plugin_dir) &&
	    ca->shutdown_grace == cb->shutdown_grace;
}

static struct sched_job *
entry_new(struct job_def *def, const struct jr_config *cfg)
{
	struct sched_job *e = xcalloc(1, sizeof *e);

	e->name = xstrdup(def->name);
	e->def = def;
	e->cfg = cfg;
	e->heap_idx = NO_HEAP;
	table_put(e);
	return e;
}

/* Let go of E's runtimes and free it (it is off the heaps and table). */
static void
entry_release(struct sched_job *e)
{
	if (e->rt)
		jobrt_set_owner(e->rt, NULL);
	for (size_t i = 0; i < e->ndraining; i++)
		jobrt_set_owner(e->draining[i], NULL);
	free(e->draining);
	free(e->name);
	free(e);
}

static void
entry_free(struct sched_job *e)
{
	unschedule(e);
	table_del(e);
	entry_release(e);
}

/* E left the config: no new runs; free it once its runs are over. */
static void
entry_remove(struct sched_job *e)
{
	unschedule(e);
	drop_pending(e, "the job was removed");
	if (e->rt) {
		drain(e, e->rt);
		e->rt = NULL;
	}
	e->removed = true;
	e->cancelling = false;
	if (e->nactive == 0)
		entry_free(e);
}

void
sched_apply(struct jr_config *cfg, bool startup, struct sched_diff *diff)
{
	struct sched_job **jobs = xcalloc(cfg->njobs + 1, sizeof *jobs);
	struct sched_job **fresh = xcalloc(cfg->njobs + 1, sizeof *fresh);
	size_t n = 0, nfresh = 0;

	memset(diff, 0, sizeof *diff);
	/* One transaction for the schedule times saved below. */
	history_batch_begin();
	for (size_t i = 0; i < s.njobs; i++)
		s.jobs[i]->seen = false;
	for (size_t i = 0; i < cfg->njobs; i++) {
		struct job_def *def = &cfg->jobs[i];
		struct sched_job *e;
		bool same_schedule;

		if (!def->enabled) {
			if (startup)
				log_info("job %s: disabled", def->name);
			continue;
		}
		if (def->plugin == NULL)
			continue;       /* its error was logged at load */
		e = table_get(def->name);
		if (e == NULL || e->removed) {
			/* New, or back while a removed version drains. */
			if (e == NULL)
				e = entry_new(def, cfg);
			e->removed = false;
			e->def = def;
			e->cfg = cfg;
			e->seen = true;
			jobs[n++] = e;
			fresh[nfresh++] = e;
			diff->added++;
			continue;
		}
		e->seen = true;
		jobs[n++] = e;
		if (def_same(e->def, e->cfg, def, cfg)) {
			/* With a runtime, it keeps the definition it was made
			 * from; without, nothing holds the old config. */
			if (e->rt == NULL) {
				e->def = def;
				e->cfg = cfg;
			} else {
				/* A reload is the admin's "try again": a pool
				 * whose prestart was suspended resumes it. */
				jobrt_prestart(e->rt);
			}
			diff->unchanged++;
			continue;
		}
		diff->changed++;
		same_schedule = schedule_same(e->def, def);
		if (e->rt) {
			drain(e, e->rt);
			e->rt = NULL;
		}
		e->def = def;
		e->cfg = cfg;
		/* A kept schedule keeps its due time (an @every cadence
		 * goes on); @start runs again for the new definition. */
		if (!same_schedule || def->sched == SCHED_START)
			schedule_init(e, false);
	}
	/* Entries not seen are not in CFG any more. */
	for (size_t i = 0; i < s.njobs; i++) {
		if (!s.jobs[i]->seen) {
			diff->removed++;
			entry_remove(s.jobs[i]);
		}
	}
	free(s.jobs);
	s.jobs = jobs;
	s.njobs = n;
	/* At start-up every runtime is made before anything runs, as the
	 * loop serves nobody yet; after a reload, a slice at a time. */
	if (startup)
		for (size_t i = 0; i < n; i++)
			entry_rt(jobs[i]);
	/* Last, with the job list complete: a catch-up may start a run. */
	for (size_t i = 0; i < nfresh; i++)
		schedule_init(fresh[i], startup);
	free(fresh);
	history_batch_end();
	heap_arm(&s.mono);
	heap_arm(&s.wall);
	if (!startup)
		warm_up_start();
}

/* ------------------------------------------------------------------ */
/* Run hooks (daemon.c forwards them)                                  */
/* ------------------------------------------------------------------ */

void
sched_run_begun(struct jobrt *rt, const struct run_info *ri)
{
	struct sched_job *e = jobrt_owner(rt);

	if (e == NULL)
		return;
	e->nactive++;
	if (ri->id > e->last_run_id)
		e->last_run_id = ri->id;
}

void
sched_run_ended(struct jobrt *rt, const struct run_info *ri)
{
	struct sched_job *e = jobrt_owner(rt);

	(void)ri;
	if (e != NULL)
		e->nactive--;
}

/*
 * After sched_run_ended and everything else heard of the end (the run
 * still counts in jobrt_active_runs): forget a drained runtime with its
 * last run, free a removed entry with its last run, start a queued run.
 */
void
sched_run_done(struct jobrt *rt)
{
	struct sched_job *e = jobrt_owner(rt);

	if (e == NULL)
		return;
	if (rt != e->rt && jobrt_active_runs(rt) == 1) {
		for (size_t i = 0; i < e->ndraining; i++) {
			if (e->draining[i] == rt) {
				e->draining[i] = e->draining[--e->ndraining];
				break;
			}
		}
		jobrt_set_owner(rt, NULL);
	}
	if (e->nactive > 0)
		return;
	e->cancelling = false;
	if (e->removed) {
		entry_free(e);
		return;
	}
	if (!e->in_cancel)
		pending_start(e);
}

/* Start E's queued run, if it has one, now that no run is active. */
static void
pending_start(struct sched_job *e)
{
	struct run_observer obs;
	bool observed;
	const char *trigger;

	if (!e->pending || e->nactive > 0 || e->removed)
		return;
	if (s.stopping) {
		drop_pending(e, "jobrund is stopping");
		return;
	}
	obs = e->pending_obs;
	observed = e->pending_observed;
	trigger = e->pending_trigger ? e->pending_trigger : "schedule";
	e->pending = false;
	e->pending_observed = false;
	memset(&e->pending_obs, 0, sizeof e->pending_obs);
	log_info("job %s: starting the queued run", e->name);
	start_run(e, trigger, observed ? &obs : NULL);
}

/* ------------------------------------------------------------------ */
/* Queries and commands                                                */
/* ------------------------------------------------------------------ */

void
sched_init(void (*rt_made)(const struct jr_config *cfg))
{
	s.rt_made = rt_made;
}

struct sched_job *
sched_find(const char *name)
{
	struct sched_job *e = name ? table_get(name) : NULL;

	return e && !e->removed ? e : NULL;
}

struct sched_job *
sched_owner(const struct jobrt *rt)
{
	return jobrt_owner(rt);
}

struct jobrt *
sched_runtime(struct sched_job *e)
{
	return s.stopping ? e->rt : entry_rt(e);
}

const struct job_def *
sched_def(const struct sched_job *e)
{
	return e->def;
}

void
sched_info(const struct sched_job *e, struct sched_info *si)
{
	memset(si, 0, sizeof *si);
	si->active_runs = e->nactive;
	si->pending = e->pending;
	si->skipped = e->skipped;
	si->last_run_id = e->last_run_id;
	si->last_fire = e->def->sched == SCHED_CRON ? e->last_fire : 0;
	si->next_fire = -1;
	if (s.stopping || e->heap == NULL)
		return;
	if (e->heap->wall)
		si->next_fire = (double)e->due_wall;
	else
		si->next_fire = real_now() + (e->due - mono_now());
}

int
sched_run(struct sched_job *e, const char *trigger, const struct run_observer *obs,
	  uint64_t *run_id, char *err, size_t errlen)
{
	const struct job_def *def = e->def;

	if (s.stopping) {
		snprintf(err, errlen, "jobrund is stopping: no new runs");
		errno = ESHUTDOWN;
		return -1;
	}
	if (e->nactive > 0) {
		switch (def->overlap) {
		case OVERLAP_SKIP:
		case OVERLAP_QUEUE:
			snprintf(err, errlen, "job %s: a run is still active (overlap = %s): "
				 "cancel it first, or wait for it to end", e->name,
				 def->overlap == OVERLAP_SKIP ? "skip" : "queue");
			errno = EBUSY;
			return -1;
		case OVERLAP_REPLACE:
			if (e->pending && obs != NULL && e->pending_observed) {
				snprintf(err, errlen, "job %s: a replacing run is already "
					 "waiting for the cancelled one to end", e->name);
				errno = EBUSY;
				return -1;
			}
			if (!e->pending)
				e->pending_trigger = trigger;
			e->pending = true;
			if (obs != NULL && !e->pending_observed) {
				e->pending_obs = *obs;
				e->pending_observed = true;
			}
			if (!e->cancelling) {
				log_msg(LOG_NOTICE, "job %s: cancelling the active run to start "
					"a new one (overlap = replace)", e->name);
				e->cancelling = true;
				cancel_all(e, false);
			}
			/* It ends, and the new one starts, perhaps already. */
			*run_id = e->last_run_id + (e->pending ? 1 : 0);
			return 1;
		case OVERLAP_ALLOW:
			if (e->nactive < def->max_concurrent_runs)
				break;
			snprintf(err, errlen, "job %s: %d runs active: max_concurrent_runs "
				 "reached", e->name, e->nactive);
			errno = EBUSY;
			return -1;
		}
	}
	*run_id = start_run(e, trigger, obs);
	return 0;
}

int
sched_cancel(struct sched_job *e, bool now)
{
	drop_pending(e, "its job's runs were cancelled");
	return cancel_all(e, now);
}

void
sched_counts(size_t *jobs, size_t *runs, size_t *threads)
{
	*jobs = s.njobs;
	*runs = *threads = 0;
	for (size_t i = 0; i < s.njobs; i++) {
		*runs += (size_t)s.jobs[i]->nactive;
		if (s.jobs[i]->def->mode == MODE_THREAD)
			*threads += (size_t)s.jobs[i]->def->workers;
	}
}

/* ------------------------------------------------------------------ */
/* Shutdown                                                            */
/* ------------------------------------------------------------------ */

void
sched_stop(void)
{
	struct sched_job **all;
	size_t n = 0;

	s.stopping = true;
	loop_timer_remove(s.mono.timer);
	loop_timer_remove(s.wall.timer);
	loop_timer_remove(s.warm_timer);
	s.mono.timer = s.wall.timer = s.warm_timer = NULL;
	/* Every entry, removed ones included; a snapshot, since ending runs
	 * frees removed entries. */
	while (s.nretiring > 0)
		jobrt_retire(s.retiring[--s.nretiring], true);
	all = xcalloc(s.nentries + 1, sizeof *all);
	for (size_t b = 0; b < s.table_size; b++)
		for (struct sched_job *e = s.table[b]; e; e = e->hnext)
			all[n++] = e;
	for (size_t i = 0; i < n; i++) {
		struct sched_job *e = all[i];

		drop_pending(e, "jobrund is stopping");
		unschedule(e);
	}
	for (size_t i = 0; i < n; i++) {
		struct sched_job *e = all[i];
		struct jobrt *rt = e->rt;
		bool removed = e->removed;

		/* Cancelling ends runs, maybe at once: the drained runtimes
		 * first (a removed entry may be freed by that, so nothing
		 * more of it), then the live one, kept in the draining list
		 * while it has runs, like the others. */
		cancel_drained(e, true);
		if (removed || rt == NULL)
			continue;
		e->rt = NULL;
		if (jobrt_active_runs(rt) > 0) {
			e->draining = xrealloc(e->draining,
			    (e->ndraining + 1) * sizeof *e->draining);
			e->draining[e->ndraining++] = rt;
		}
		jobrt_retire(rt, true);
	}
	free(all);
}

void
sched_free(void)
{
	for (size_t b = 0; b < s.table_size; b++) {
		for (struct sched_job *e = s.table[b], *next; e; e = next) {
			next = e->hnext;
			entry_release(e);
		}
	}
	free(s.table);
	free(s.jobs);
	free(s.retiring);
	free(s.mono.v);
	free(s.wall.v);
	loop_timer_remove(s.mono.timer);
	loop_timer_remove(s.wall.timer);
	loop_timer_remove(s.warm_timer);
	memset(&s.mono, 0, sizeof s.mono);
	memset(&s.wall, 0, sizeof s.wall);
	s.table = NULL;
	s.jobs = NULL;
	s.table_size = s.nentries = s.njobs = 0;
}
