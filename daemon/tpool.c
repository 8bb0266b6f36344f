/*
 * tpool.c - the thread executor: a pool of pthreads per thread-mode job.
 *
 * The main thread puts tasks on the pool's shared queue, as spans:
 * consecutive tasks of one run's array, the way run.c submits them.  A
 * worker thread claims a chunk of them at a time, from the span at the
 * head of the queue: one task when few are queued, up to CHUNK_MAX when
 * many are (its share of what is queued, so the tail still spreads over
 * every thread).  Claiming a chunk moves two numbers and touches no
 * task: a task's record is written by the main thread on another core,
 * and walking a list through the records, under the queue's lock, cost
 * more than the tasks.  A claimed chunk stays
 * visible as the thread's own range until each task starts, and an idle
 * thread steals the back half of another thread's range: so a slow task
 * never holds up the tasks claimed behind it while a thread is free to
 * run them.
 *
 * Finished tasks gather on the thread and move to one completion list
 * shared by all pools when the thread runs out of claimed work, when
 * DONE_BATCH have gathered or DONE_DELAY_S of task time has passed; the
 * first to arrive on an empty list rings an eventfd that the main loop
 * watches.  So results are recorded by the main thread, like everything
 * else, and the locks and the eventfd are paid per chunk, not per task.
 * A thread that goes on to a long task would sit on what it holds: so
 * while any pool has work, the main thread also takes what threads hold,
 * SWEEP_S after work or results arrive and then less and less often
 * while it finds nothing (up to SWEEP_MAX_S): a result is late by a few
 * ms while results flow, by SWEEP_MAX_S at most, and a pool without work
 * is never looked at.
 *
 * Threads start on demand, when tasks are queued and no thread is free
 * (up to `workers`), so a job that has not run costs no thread -- unless
 * it asks for them all at once (`prestart`, tpool_prestart).
 *
 * Cancellation is cooperative: the task's cancel flag (and its deadline)
 * are what the plugin sees through host->task_cancelled.  A thread cannot
 * be killed; a plugin that ignores cancellation keeps its thread.  That is
 * the honest limit of thread mode, and why process mode exists.
 *
 * The plugin's init runs once per job, here in the daemon, and its state
 * is shared by the pool's threads (which is what JR_PLUGIN_THREAD_SAFE
 * promises is fine).
 *
 * Locks: a pool's lock (queue, thread count, stopping) is taken before a
 * thread's lock (its claimed range and what it runs), never after; the
 * completion lock is taken alone.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "jobrund.h"

#define CHUNK_MAX 256           /* tasks a thread claims at once */
#define PREFETCH_AHEAD 4        /* claimed records fetched ahead of use */
#define DONE_BATCH 256          /* finished tasks a thread holds back */
#define DONE_DELAY_S 1e-3       /* ... and for how much task time */
#define SWEEP_S 5e-3            /* the main thread takes held results */
#define SWEEP_MAX_S 1.0

/* Queued tasks: N consecutive elements of one run's array. */
struct span {
	struct task *first;
	size_t n;
	struct span *next;
};

/* A list of finished tasks, held by the thread that finished them. */
struct done_list {
	struct task *head, *tail;
	size_t n;
	double wall;                    /* the time their tasks took */
};

/* One thread of a pool, and what `jobrunctl workers` shows of it. */
struct tthread {
	struct tpool *tp;
	pthread_t th;
	pid_t tid;                      /* set by the thread as it starts */
	pthread_mutex_t lock;           /* guards the rest but `cancel` */
	struct task *mine;              /* claimed, not started: stealable; */
	size_t nmine;                   /* consecutive tasks of one run */
	struct done_list held;          /* finished, not yet published */
	bool busy;
	uint64_t run;
	size_t index;
	uint64_t done;
	struct task *task;              /* the task it runs; NULL once abandoned */
	const char *input;              /* its input (the definition's) */
	double started;                 /* mono_now() when it took it */
	bool abandoned;                 /* its result was given up (stuck) */
	_Atomic int cancel;             /* the running task's cancel flag */
};

struct tpool {
	struct job_def *def;
	const struct jr_plugin *pl;
	void *state;                    /* the plugin's, from init */
	struct tthread *threads;        /* `workers` of them, nstarted used */
	int nthreads;
	pid_t pid;                      /* ours, for the results */
	pthread_mutex_t lock;           /* guards queue, nqueued, stopping,
					   nstarted, nrunning, nidle, stuck */
	pthread_cond_t cond;
	struct span *head, *tail;       /* the queue */
	size_t nqueued;                 /* tasks in it */
	int nstarted;                   /* threads created */
	int nrunning;                   /* threads still alive */
	int nidle;                      /* threads waiting for work */
	bool stopping;
	int stuck;                      /* abandoned threads still inside the plugin */
	struct loop_timer *watch;       /* looks for stuck threads (main thread) */
	struct tpool *next_pool;        /* every pool, dying ones too */
};

/* Finished tasks, from every pool, waiting for the main thread. */
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static struct task *done_head, *done_tail;
static int done_fd = -1;
/* Pools being stopped: freed by the main thread once their threads have
 * exited, which they announce through the same eventfd. */
static struct tpool **dying;
static int ndying, dying_cap;
/* Every pool not yet destroyed, and the timer that sweeps their threads'
 * held results (main thread only). */
static struct tpool *pools;
static struct loop_timer *sweep_timer;
static bool sweep_armed;
static double sweep_every = SWEEP_S;

static void
ring(void)
{
	uint64_t one = 1;

	/* EAGAIN only when the counter is already huge: it is rung anyway. */
	(void)!write(done_fd, &one, sizeof one);
}

/* The thread's own flag, not the task's: a task abandoned as stuck is
 * freed while its thread may still be polling. */
static int
cancel_check(struct jr_task *jt)
{
	struct tthread *self = jt->cancel_arg;

	return atomic_load_explicit(&self->cancel, memory_order_relaxed);
}

/* Move what the thread computed into the task's result. */
static void
give_result(struct task *t, struct task_result *res)
{
	struct task_result *r = &t->result;

	result_move_output(r, res);
	free(r->error);
	r->status = res->status;
	r->error = res->error;
	r->started = res->started;
	r->wall_s = res->wall_s;
	r->cpu_s = res->cpu_s;
	r->pid = res->pid;
	res->output = res->error = NULL;
}

/* --- a thread's finished and claimed tasks ---------------------------- */

static void
list_append(struct task **head, struct task **tail, struct task *t)
{
	t->next = NULL;
	if (*tail)
		(*tail)->next = t;
	else
		*head = t;
	*tail = t;
}

/* Take what SELF holds (SELF->lock held). */
static struct done_list
take_held(struct tthread *self)
{
	struct done_list dl = self->held;

	memset(&self->held, 0, sizeof self->held);
	return dl;
}

/* Hand finished tasks to the main thread. */
static void
publish(struct done_list *dl)
{
	bool wake;

	if (dl->head == NULL)
		return;
	pthread_mutex_lock(&done_lock);
	wake = done_head == NULL;
	if (done_tail)
		done_tail->next = dl->head;
	else
		done_head = dl->head;
	done_tail = dl->tail;
	pthread_mutex_unlock(&done_lock);
	dl->head = dl->tail = NULL;
	dl->n = 0;
	dl->wall = 0;
	/* The main thread takes the whole list at once: only the first
	 * arrival after a take needs to wake it. */
	if (wake)
		ring();
}

/* Start SELF on its first claimed task (SELF->lock held). */
static struct task *
begin_next(struct tthread *self)
{
	struct task *t = self->mine;

	self->mine = --self->nmine > 0 ? t + 1 : NULL;
	if (self->nmine > PREFETCH_AHEAD) {
		const char *p = (const char *)(t + 1 + PREFETCH_AHEAD);
		for (size_t off = 0; off < sizeof *t; off += 64)
			__builtin_prefetch(p + off, 1);
	}
	t->next = NULL;
	self->busy = true;
	self->run = t->result.run;
	self->index = t->result.index;
	self->task = t;
	self->input = t->result.input;  /* read under the lock: T may be
					   abandoned (and freed) later */
	/* Only the stuck-thread watch (jobs with a timeout) looks at it. */
	self->started = self->tp->def->timeout_s > 0 ? mono_now() : 0;
	self->abandoned = false;
	atomic_store(&self->cancel, atomic_load((_Atomic int *)&t->cancel));
	t->exec_priv = self;
	return t;
}

/* Claim up to N tasks from the front of the pool's queue: SELF's range
 * is empty (both locks held). */
static void
claim(struct tpool *tp, struct tthread *self, size_t n)
{
	struct span *sp = tp->head;

	if (n > sp->n)
		n = sp->n;
	self->mine = sp->first;
	self->nmine = n;
	sp->first += n;
	sp->n -= n;
	tp->nqueued -= n;
	if (sp->n == 0) {
		tp->head = sp->next;
		if (tp->head == NULL)
			tp->tail = NULL;
		free(sp);
	}
}

/* Take the back half of the longest claimed range of another thread of
 * the pool (tp->lock held; SELF's range is empty).  True if SELF got
 * something. */
static bool
steal(struct tpool *tp, struct tthread *self)
{
	struct tthread *victim = NULL;
	size_t most = 0;

	for (int i = 0; i < tp->nstarted; i++) {
		struct tthread *th = &tp->threads[i];
		size_t n;

		if (th == self)
			continue;
		pthread_mutex_lock(&th->lock);
		n = th->nmine;
		pthread_mutex_unlock(&th->lock);
		if (n > most) {
			most = n;
			victim = th;
		}
	}
	if (victim == NULL)
		return false;
	pthread_mutex_lock(&victim->lock);
	/* Its count may have dropped since: take what is there now. */
	size_t keep = victim->nmine / 2, taken = victim->nmine - keep;
	struct task *first = victim->mine + keep;

	if (taken == 0) {
		pthread_mutex_unlock(&victim->lock);
		return false;
	}
	victim->nmine = keep;
	if (keep == 0)
		victim->mine = NULL;
	pthread_mutex_unlock(&victim->lock);

	pthread_mutex_lock(&self->lock);
	self->mine = first;
	self->nmine = taken;
	pthread_mutex_unlock(&self->lock);
	return true;
}

/* The next task for SELF, whose claimed range is empty: claiming or
 * stealing more, waiting when there is nothing at all; NULL when the pool
 * is stopping and nothing is left.  Finished tasks are published first. */
static struct task *
next_task(struct tthread *self)
{
	struct tpool *tp = self->tp;
	struct task *t = NULL;
	struct done_list dl;

	pthread_mutex_lock(&self->lock);
	dl = take_held(self);
	pthread_mutex_unlock(&self->lock);
	publish(&dl);

	while (t == NULL) {
		bool got = false;

		pthread_mutex_lock(&tp->lock);
		for (;;) {
			if (tp->head) {
				size_t n = tp->nqueued / (2 * (size_t)tp->nthreads);

				n = n < 1 ? 1 : n > CHUNK_MAX ? CHUNK_MAX : n;
				pthread_mutex_lock(&self->lock);
				claim(tp, self, n);
				pthread_mutex_unlock(&self->lock);
				got = true;
				break;
			}
			if (!tp->stopping && steal(tp, self)) {
				got = true;
				break;
			}
			if (tp->stopping)
				break;
			host_timing_idle();
			tp->nidle++;
			pthread_cond_wait(&tp->cond, &tp->lock);
			tp->nidle--;
		}
		if (!got)
			tp->nrunning--;
		pthread_mutex_unlock(&tp->lock);
		if (!got)
			return NULL;
		/* Outside the pool's lock: the first record of the range is
		 * a cache miss.  Another thread may have stolen the range,
		 * or the stuck watch taken it, meanwhile. */
		pthread_mutex_lock(&self->lock);
		if (self->nmine > 0)
			t = begin_next(self);
		pthread_mutex_unlock(&self->lock);
	}
	return t;
}

static void *
thread_main(void *arg)
{
	struct tthread *self = arg;
	struct tpool *tp = self->tp;
	struct done_list dl;
	struct task *t = NULL;          /* begun under the lock that filed
					   the one before */

	pthread_mutex_lock(&self->lock);
	self->tid = gettid();
	pthread_mutex_unlock(&self->lock);
	for (;;) {
		struct task_result res;
		struct jr_task jt;
		bool abandoned;

		if (t == NULL && (t = next_task(self)) == NULL)
			break;

		memset(&res, 0, sizeof res);
		res.pid = tp->pid;
		if (atomic_load(&self->cancel)) {
			/* Cancelled while queued but not yet removed. */
			res.status = TASK_CANCELLED;
			res.error = xstrdup("cancelled before it started");
			clock_gettime(CLOCK_REALTIME, &res.started);
		} else {
			/* The input is the job definition's, which outlives
			 * the pool (daemon.c frees a configuration only when
			 * no pool is left that reads it). */
			host_task_init(&jt, tp->def->name, self->input, tp->def->timeout_s);
			jt.cancel_check = cancel_check;
			jt.cancel_arg = self;
			host_run_task(tp->pl, tp->state, &jt, &res);
			host_task_release(&jt);
		}

		dl.head = NULL;
		pthread_mutex_lock(&self->lock);
		self->busy = false;
		self->done++;
		abandoned = self->abandoned;
		if (abandoned) {
			/* Its result was recorded as a timeout long ago: this
			 * one is too late to count. */
			self->abandoned = false;
		} else {
			give_result(t, &res);
			t->exec_priv = NULL;
			list_append(&self->held.head, &self->held.tail, t);
			self->held.n++;
			self->held.wall += t->result.wall_s;
			if (self->held.n >= DONE_BATCH || self->held.wall >= DONE_DELAY_S)
				dl = take_held(self);
		}
		self->task = NULL;
		/* The next claimed task, in the same hold of the lock: one
		 * lock per task, not two. */
		t = !abandoned && self->nmine > 0 ? begin_next(self) : NULL;
		pthread_mutex_unlock(&self->lock);

		if (abandoned) {
			pthread_mutex_lock(&tp->lock);
			tp->stuck--;
			pthread_mutex_unlock(&tp->lock);
			log_msg(LOG_WARNING, "job %s: the stuck thread of run %" PRIu64
				" task %zu returned after all (%.1fs); its result is "
				"discarded", tp->def->name, self->run, self->index,
				mono_now() - self->started);
			result_clear(&res);
			ring();
			continue;
		}
		if (dl.head)
			publish(&dl);
	}
	pthread_mutex_lock(&self->lock);
	dl = take_held(self);
	pthread_mutex_unlock(&self->lock);
	publish(&dl);
	ring();                         /* announce the exit (reap_dying) */
	return NULL;
}

static void reap_dying(void);

static void
finish_list(struct task *list)
{
	while (list) {
		struct task *t = list;
		list = t->next;
		t->next = NULL;
		run_task_done(t);
	}
}

/* Look for held results SWEEP_S from now (main thread). */
static void
sweep_soon(void)
{
	/* Armed for SWEEP_S already: leave it (no system call per batch);
	 * armed for later, after finding nothing for a while: bring it in. */
	if (sweep_timer == NULL || (sweep_armed && sweep_every == SWEEP_S))
		return;
	sweep_every = SWEEP_S;
	loop_timer_set(sweep_timer, sweep_every, 0);
	sweep_armed = true;
}

/* Take the results threads hold (one may be in a long task by now), and
 * look again while any pool has work: soon if this found some, later and
 * later if not. */
static void
sweep(void *arg)
{
	struct done_list all = { 0 };
	bool working = false;

	(void)arg;
	sweep_armed = false;
	for (struct tpool *tp = pools; tp; tp = tp->next_pool) {
		pthread_mutex_lock(&tp->lock);
		working |= tp->head != NULL;
		for (int i = 0; i < tp->nstarted; i++) {
			struct tthread *th = &tp->threads[i];
			struct done_list dl;

			pthread_mutex_lock(&th->lock);
			dl = take_held(th);
			working |= th->busy || th->nmine > 0;
			pthread_mutex_unlock(&th->lock);
			if (dl.head == NULL)
				continue;
			if (all.tail)
				all.tail->next = dl.head;
			else
				all.head = dl.head;
			all.tail = dl.tail;
		}
		pthread_mutex_unlock(&tp->lock);
	}
	if (all.head)
		sweep_every = SWEEP_S;
	else if ((sweep_every *= 2) > SWEEP_MAX_S)
		sweep_every = SWEEP_MAX_S;
	if (working) {
		loop_timer_set(sweep_timer, sweep_every, 0);
		sweep_armed = true;
	}
	finish_list(all.head);
}

static void
completions_ready(int fd, uint32_t events, void *arg)
{
	uint64_t n;
	struct task *list;

	(void)events;
	(void)arg;
	(void)!read(fd, &n, sizeof n);
	pthread_mutex_lock(&done_lock);
	list = done_head;
	done_head = done_tail = NULL;
	pthread_mutex_unlock(&done_lock);
	if (list)
		sweep_soon();
	finish_list(list);
	reap_dying();
}

void
tpool_setup(void)
{
	done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (done_fd == -1)
		fatal("eventfd");
	loop_add(done_fd, EPOLLIN, completions_ready, NULL);
	sweep_timer = loop_timer_new(sweep, NULL);
}

void
tpool_shutdown(void)
{
	loop_timer_remove(sweep_timer);
	sweep_timer = NULL;
	sweep_armed = false;
	/* A thread stuck in a plugin at exit may still ring: leave it the
	 * descriptor rather than a number the next open could reuse. */
	if (tpool_threads_alive() > 0)
		return;
	if (done_fd != -1)
		close(done_fd);
	done_fd = -1;
	free(dying);
	dying = NULL;
	ndying = dying_cap = 0;
}

struct tpool *
tpool_new(struct job_def *def, const struct jr_config *cfg, char *err, size_t errlen)
{
	struct tpool *tp;
	struct errlist errs = { 0 };
	struct jr_job hj;
	void *state;
	int rc;

	if (def->plugin == NULL) {
		snprintf(err, errlen, "plugin '%s' is not loaded", def->plugin_name);
		return NULL;
	}
	host_job_init(&hj, def, cfg, &errs);
	rc = host_plugin_init(loader_descriptor(def->plugin), &hj, &state);
	host_job_release(&hj);
	if (rc != 0) {
		snprintf(err, errlen, "plugin %s: init failed: %s", def->plugin_name,
			 errs.n ? errs.msgs[0] : strerror(rc));
		errlist_free(&errs);
		return NULL;
	}
	errlist_free(&errs);

	tp = xcalloc(1, sizeof *tp);
	tp->def = def;
	tp->pl = loader_descriptor(def->plugin);
	tp->state = state;
	tp->pid = getpid();
	tp->next_pool = pools;
	pools = tp;
	tp->nthreads = def->workers;
	tp->threads = xcalloc((size_t)tp->nthreads, sizeof *tp->threads);
	pthread_mutex_init(&tp->lock, NULL);
	pthread_cond_init(&tp->cond, NULL);
	for (int i = 0; i < tp->nthreads; i++) {
		tp->threads[i].tp = tp;
		pthread_mutex_init(&tp->threads[i].lock, NULL);
	}
	return tp;
}

/* Start up to WANTED more threads, up to the pool's size (tp->lock
 * held).  Threads inherit the main thread's mask, which blocks the
 * signals the signalfd reads: they never take a signal. */
static void
start_threads(struct tpool *tp, size_t wanted)
{
	while (wanted-- > 0 && tp->nstarted < tp->nthreads) {
		struct tthread *th = &tp->threads[tp->nstarted];
		int rc = pthread_create(&th->th, NULL, thread_main, th);

		if (rc != 0) {
			/* The threads already there serve the queue; with
			 * none at all, the tasks would wait for ever. */
			log_msg(LOG_ERR, "job %s: cannot start thread %d of %d: %s",
				tp->def->name, tp->nstarted + 1, tp->nthreads, strerror(rc));
			break;
		}
		tp->nstarted++;
		tp->nrunning++;
		if (tp->nstarted == 1)
			log_debug("job %s: thread pool started", tp->def->name);
	}
}

/* Finish T now, in the main thread, without (waiting for) its run:
 * RAN_S is how long it has been running, 0 if it never started. */
static void
finish_unrun(struct task *t, enum task_status st, const char *why, double ran_s)
{
	t->next = NULL;
	t->result.status = st;
	free(t->result.error);
	t->result.error = xstrdup(why);
	clock_gettime(CLOCK_REALTIME, &t->result.started);
	if (ran_s > 0) {
		double start = ts_to_s(&t->result.started) - ran_s;

		t->result.started.tv_sec = (time_t)start;
		t->result.started.tv_nsec = (long)((start - (double)(time_t)start) * 1e9);
		t->result.wall_s = ran_s;
	}
	t->result.pid = getpid();
	run_task_done(t);
}

static struct span *
span_new(struct task *first, size_t n, struct span *next)
{
	struct span *sp = xmalloc(sizeof *sp);

	sp->first = first;
	sp->n = n;
	sp->next = next;
	return sp;
}

/* Put TH's claimed range on the span list *LIST (TH->lock held). */
static void
take_mine(struct tthread *th, struct span **list)
{
	if (th->nmine == 0)
		return;
	*list = span_new(th->mine, th->nmine, *list);
	th->mine = NULL;
	th->nmine = 0;
}

/* Finish every task of the spans in LIST unrun, and free the list. */
static void
finish_spans(struct span *list, enum task_status st, const char *why)
{
	while (list) {
		struct span *sp = list;
		struct task *first = sp->first;
		size_t n = sp->n;

		list = sp->next;
		free(sp);
		/* The last task of a run may end it and free its array: no
		 * task of the span is looked at after its own finish. */
		for (size_t i = 0; i < n; i++)
			finish_unrun(&first[i], st, why, 0);
	}
}

static void stuck_watch(void *arg);

/* TASKS: consecutive tasks of one run (see struct span). */
void
tpool_submit_many(struct tpool *tp, struct task *tasks, size_t n)
{
	int stuck, started;

	if (n == 0)
		return;
	struct span *sp = span_new(tasks, n, NULL);

	pthread_mutex_lock(&tp->lock);
	stuck = tp->stuck;
	if (stuck == 0) {
		if (tp->tail)
			tp->tail->next = sp;
		else
			tp->head = sp;
		tp->tail = sp;
		tp->nqueued += n;
		sp = NULL;
		/* Threads for what no free thread will take. */
		start_threads(tp, tp->nqueued > (size_t)tp->nidle ?
			      tp->nqueued - (size_t)tp->nidle : 0);
		if (tp->nstarted == 0) {
			/* No thread to run them: they fail below.  Only
			 * these can be queued (earlier ones failed too). */
			while ((sp = tp->head) != NULL) {
				tp->head = sp->next;
				free(sp);
			}
			tp->tail = NULL;
			tp->nqueued = 0;
		} else if (n == 1) {
			pthread_cond_signal(&tp->cond);
		} else {
			pthread_cond_broadcast(&tp->cond);
		}
	}
	started = tp->nstarted;
	pthread_mutex_unlock(&tp->lock);
	free(sp);                       /* not queued */
	if (stuck == 0 && started == 0) {
		for (size_t i = 0; i < n; i++)
			finish_unrun(&tasks[i], TASK_FAILED, "not run: cannot start "
				     "any thread for this job (see the log)", 0);
		return;
	}
	if (stuck > 0) {
		char *why = xasprintf("not run: %d thread%s of this job %s stuck in the "
				      "plugin past timeout + kill_grace (thread mode "
				      "cannot kill a thread)", stuck, stuck == 1 ? "" : "s",
				      stuck == 1 ? "is" : "are");
		for (size_t i = 0; i < n; i++)
			finish_unrun(&tasks[i], TASK_SKIPPED, why, 0);
		free(why);
		return;
	}
	sweep_soon();
	/* A job with a timeout needs someone to notice a thread that does
	 * not come back: only while it has work. */
	if (tp->def->timeout_s > 0 && tp->watch == NULL) {
		double every = tp->def->kill_grace_s / 4;
		if (every < 0.05)
			every = 0.05;
		if (every > 0.5)
			every = 0.5;
		tp->watch = loop_timer_add(every, every, stuck_watch, tp);
	}
}

void
tpool_prestart(struct tpool *tp)
{
	pthread_mutex_lock(&tp->lock);
	start_threads(tp, (size_t)tp->nthreads);
	pthread_mutex_unlock(&tp->lock);
}

void
tpool_submit(struct tpool *tp, struct task *t)
{
	tpool_submit_many(tp, t, 1);
}

/* Give up on threads past timeout + kill_grace: record their tasks as
 * timed out now, and refuse the job's tasks while any is stuck. */
static void
stuck_watch(void *arg)
{
	struct tpool *tp = arg;
	struct task *given_up[64];
	struct span *queued = NULL;
	double ran[64];
	size_t ngiven = 0;
	bool idle = true;
	double limit = tp->def->timeout_s + tp->def->kill_grace_s, now = mono_now();

	pthread_mutex_lock(&tp->lock);
	for (int i = 0; i < tp->nstarted; i++) {
		struct tthread *th = &tp->threads[i];

		pthread_mutex_lock(&th->lock);
		if (th->busy || th->nmine > 0)
			idle = false;
		if (th->busy && !th->abandoned && th->task != NULL &&
		    now - th->started >= limit && ngiven < 64) {
			th->abandoned = true;
			tp->stuck++;
			ran[ngiven] = now - th->started;
			given_up[ngiven++] = th->task;
			th->task->exec_priv = NULL;
			th->task = NULL;
		}
		pthread_mutex_unlock(&th->lock);
	}
	if (ngiven > 0) {
		/* Nothing more of this job runs while a thread is stuck:
		 * what is queued or claimed is skipped. */
		queued = tp->head;
		tp->head = tp->tail = NULL;
		tp->nqueued = 0;
		for (int i = 0; i < tp->nstarted; i++) {
			struct tthread *th = &tp->threads[i];

			pthread_mutex_lock(&th->lock);
			take_mine(th, &queued);
			pthread_mutex_unlock(&th->lock);
		}
	}
	if (tp->head)
		idle = false;
	pthread_mutex_unlock(&tp->lock);

	for (size_t i = 0; i < ngiven; i++) {
		char *why = xasprintf("timed out after %gs and still running %gs later: "
				      "its thread is stuck in the plugin (thread mode "
				      "cannot kill it; use mode = \"process\")",
				      tp->def->timeout_s, tp->def->kill_grace_s);
		log_msg(LOG_ERR, "job %s: run %" PRIu64 " task %zu: %s", tp->def->name,
			given_up[i]->result.run, given_up[i]->result.index, why);
		finish_unrun(given_up[i], TASK_TIMEOUT, why, ran[i]);
		free(why);
	}
	finish_spans(queued, TASK_SKIPPED, "not run: a thread of this job is "
		     "stuck in the plugin (thread mode cannot kill a thread)");
	if (idle && ngiven == 0) {
		loop_timer_remove(tp->watch);
		tp->watch = NULL;
	}
}

void
tpool_cancel_run(struct tpool *tp, const struct run *run)
{
	struct span *taken = NULL, **pp = &tp->head, *sp;

	/* One pass over the queue and the claimed ranges, whatever the size
	 * of the run: cancelling task by task would walk the queue once per
	 * task, with the main loop held all along.  A span is of one run. */
	pthread_mutex_lock(&tp->lock);
	tp->tail = NULL;
	while ((sp = *pp) != NULL) {
		if (sp->first->run == run) {
			*pp = sp->next;
			tp->nqueued -= sp->n;
			sp->next = taken;
			taken = sp;
		} else {
			tp->tail = sp;
			pp = &sp->next;
		}
	}
	for (int i = 0; i < tp->nstarted; i++) {
		struct tthread *th = &tp->threads[i];

		pthread_mutex_lock(&th->lock);
		if (th->nmine > 0 && th->mine->run == run)
			take_mine(th, &taken);
		if (th->task != NULL && th->task->run == run)
			atomic_store(&th->cancel, 1);
		pthread_mutex_unlock(&th->lock);
	}
	pthread_mutex_unlock(&tp->lock);
	finish_spans(taken, TASK_CANCELLED, "cancelled before it started");
}

static void
tpool_destroy(struct tpool *tp)
{
	struct tpool **pp;

	for (pp = &pools; *pp != tp; pp = &(*pp)->next_pool)
		;
	*pp = tp->next_pool;
	for (int i = 0; i < tp->nstarted; i++)
		pthread_join(tp->threads[i].th, NULL);
	for (int i = 0; i < tp->nthreads; i++)
		pthread_mutex_destroy(&tp->threads[i].lock);
	if (tp->pl->fini)
		tp->pl->fini(&host_table, tp->state);
	pthread_mutex_destroy(&tp->lock);
	pthread_cond_destroy(&tp->cond);
	free(tp->threads);
	free(tp);
}

/* Free stopped pools whose threads have all exited. */
static void
reap_dying(void)
{
	for (int i = 0; i < ndying; ) {
		struct tpool *tp = dying[i];
		int alive;

		pthread_mutex_lock(&tp->lock);
		alive = tp->nrunning;
		pthread_mutex_unlock(&tp->lock);
		if (alive == 0) {
			tpool_destroy(tp);
			dying[i] = dying[--ndying];
		} else {
			i++;
		}
	}
}

void
tpool_free(struct tpool *tp)
{
	loop_timer_remove(tp->watch);
	tp->watch = NULL;
	pthread_mutex_lock(&tp->lock);
	tp->stopping = true;
	pthread_cond_broadcast(&tp->cond);
	pthread_mutex_unlock(&tp->lock);
	if (ndying == dying_cap) {
		dying_cap = dying_cap ? dying_cap * 2 : 8;
		dying = xrealloc(dying, (size_t)dying_cap * sizeof *dying);
	}
	/* Never block the loop on a thread that may be stuck in a plugin:
	 * the pool is freed when its threads announce they have exited. */
	dying[ndying++] = tp;
	reap_dying();
}

bool
tpool_stuck(struct tpool *tp)
{
	bool stuck;

	pthread_mutex_lock(&tp->lock);
	stuck = tp->stuck > 0;
	pthread_mutex_unlock(&tp->lock);
	return stuck;
}

int
tpool_threads_alive(void)
{
	int n = 0;

	reap_dying();
	for (int i = 0; i < ndying; i++) {
		pthread_mutex_lock(&dying[i]->lock);
		n += dying[i]->nrunning;
		pthread_mutex_unlock(&dying[i]->lock);
	}
	return n;
}

void
tpool_foreach_thread(struct tpool *tp,
		     void (*cb)(const struct tpool_thread_info *ti, void *arg), void *arg)
{
	struct tpool_thread_info *info;
	int n;

	/* Copy under the locks, call back without them.  Threads not
	 * started yet are not there to show, like worker processes. */
	info = xcalloc((size_t)tp->nthreads, sizeof *info);
	pthread_mutex_lock(&tp->lock);
	n = tp->nstarted;
	for (int i = 0; i < n; i++) {
		struct tthread *th = &tp->threads[i];

		pthread_mutex_lock(&th->lock);
		info[i].tid = th->tid;
		info[i].busy = th->busy;
		info[i].run = th->run;
		info[i].index = th->index;
		info[i].done = th->done;
		pthread_mutex_unlock(&th->lock);
	}
	pthread_mutex_unlock(&tp->lock);
	for (int i = 0; i < n; i++)
		cb(&info[i], arg);
	free(info);
}
