/*
 * tpool.c - the thread executor: a pool of pthreads per thread-mode job.
 *
 * The main thread puts tasks on the pool's queue; a worker thread takes
 * one, runs the plugin, and puts the finished task on one completion list
 * shared by all pools, ringing an eventfd that the main loop watches.  So
 * results are recorded by the main thread, like everything else, and the
 * threads touch nothing but their task and the two locked lists.
 *
 * Cancellation is cooperative: the task's cancel flag (and its deadline)
 * are what the plugin sees through host->task_cancelled.  A thread cannot
 * be killed; a plugin that ignores cancellation keeps its thread.  That is
 * the honest limit of thread mode, and why process mode exists.
 *
 * The plugin's init runs once per job, here in the daemon, and its state
 * is shared by the pool's threads (which is what JR_PLUGIN_THREAD_SAFE
 * promises is fine).
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

/* One thread of a pool, and what `jobrunctl workers` shows of it. */
struct tthread {
	struct tpool *tp;
	pthread_t th;
	pid_t tid;                      /* set by the thread as it starts */
	bool busy;                      /* these: guarded by tp->lock */
	uint64_t run;
	size_t index;
	uint64_t done;
	struct task *task;              /* the task it runs; NULL once abandoned */
	double started;                 /* mono_now() when it took it */
	bool abandoned;                 /* its result was given up (stuck) */
	_Atomic int cancel;             /* the running task's cancel flag */
};

struct tpool {
	struct job_def *def;
	const struct jr_plugin *pl;
	void *state;                    /* the plugin's, from init */
	struct tthread *threads;
	int nthreads;
	int nrunning;                   /* threads still alive */
	pthread_mutex_t lock;           /* guards queue, stopping, nrunning,
					   the threads' busy state */
	pthread_cond_t cond;
	struct task *head, *tail;
	bool stopping;
	int stuck;                      /* abandoned threads still inside the plugin */
	struct loop_timer *watch;       /* looks for stuck threads (main thread) */
};

/* Finished tasks, from every pool, waiting for the main thread. */
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static struct task *done_head, *done_tail;
static int done_fd = -1;
/* Pools being stopped: freed by the main thread once their threads have
 * exited, which they announce through the same eventfd. */
static struct tpool **dying;
static int ndying, dying_cap;

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

/* Run T's plugin call on private copies of everything it touches, so that
 * the task can be abandoned (and freed) while the call goes on. */
static void
run_in_thread(struct tthread *self, struct task *t, struct task_result *res,
	      char **input)
{
	struct tpool *tp = self->tp;
	struct jr_task jt;

	host_task_init(&jt, tp->def->name, *input, tp->def->timeout_s);
	jt.cancel_check = cancel_check;
	jt.cancel_arg = self;
	res->pid = getpid();
	host_run_task(tp->pl, tp->state, &jt, res);
	host_task_release(&jt);
	(void)t;
}

/* Move what the thread computed into the task's result. */
static void
give_result(struct task *t, struct task_result *res)
{
	struct task_result *r = &t->result;

	free(r->output);
	free(r->error);
	r->status = res->status;
	r->output = res->output;
	r->output_len = res->output_len;
	r->error = res->error;
	r->started = res->started;
	r->wall_s = res->wall_s;
	r->cpu_s = res->cpu_s;
	r->pid = res->pid;
	res->output = res->error = NULL;
}

static void *
thread_main(void *arg)
{
	struct tthread *self = arg;
	struct tpool *tp = self->tp;

	pthread_mutex_lock(&tp->lock);
	self->tid = gettid();
	pthread_mutex_unlock(&tp->lock);
	for (;;) {
		struct task *t;
		struct task_result res;
		char *input;
		bool abandoned, wake;

		pthread_mutex_lock(&tp->lock);
		while (tp->head == NULL && !tp->stopping)
			pthread_cond_wait(&tp->cond, &tp->lock);
		if (tp->head == NULL) {         /* stopping, queue empty */
			tp->nrunning--;
			pthread_mutex_unlock(&tp->lock);
			ring();
			return NULL;
		}
		t = tp->head;
		tp->head = t->next;
		if (tp->head == NULL)
			tp->tail = NULL;
		t->next = NULL;
		self->busy = true;
		self->run = t->result.run;
		self->index = t->index;
		self->task = t;
		self->started = mono_now();
		self->abandoned = false;
		atomic_store(&self->cancel, atomic_load((_Atomic int *)&t->cancel));
		t->exec_priv = self;
		input = t->input ? xstrdup(t->input) : NULL;
		pthread_mutex_unlock(&tp->lock);

		memset(&res, 0, sizeof res);
		if (atomic_load(&self->cancel)) {
			/* Cancelled while queued but not yet removed. */
			res.status = TASK_CANCELLED;
			res.error = xstrdup("cancelled before it started");
			clock_gettime(CLOCK_REALTIME, &res.started);
			res.pid = getpid();
		} else {
			run_in_thread(self, t, &res, &input);
		}
		free(input);

		pthread_mutex_lock(&tp->lock);
		self->busy = false;
		self->done++;
		abandoned = self->abandoned;
		if (abandoned) {
			/* Its result was recorded as a timeout long ago: this
			 * one is too late to count. */
			self->abandoned = false;
			tp->stuck--;
		} else {
			give_result(t, &res);
			t->exec_priv = NULL;
		}
		self->task = NULL;
		pthread_mutex_unlock(&tp->lock);

		if (abandoned) {
			log_msg(LOG_WARNING, "job %s: the stuck thread of run %" PRIu64
				" task %zu returned after all (%.1fs); its result is "
				"discarded", tp->def->name, self->run, self->index,
				mono_now() - self->started);
			result_clear(&res);
			ring();
			continue;
		}
		pthread_mutex_lock(&done_lock);
		wake = done_head == NULL;
		if (done_tail)
			done_tail->next = t;
		else
			done_head = t;
		done_tail = t;
		pthread_mutex_unlock(&done_lock);
		/* The main thread takes the whole list at once: only the first
		 * finisher after a take needs to wake it (one write per batch,
		 * not per task). */
		if (wake)
			ring();
	}
}

static void reap_dying(void);

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
	while (list) {
		struct task *t = list;
		list = t->next;
		t->next = NULL;
		run_task_done(t);
	}
	reap_dying();
}

void
tpool_setup(void)
{
	done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (done_fd == -1)
		fatal("eventfd");
	loop_add(done_fd, EPOLLIN, completions_ready, NULL);
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
	host_job_init(&hj, def, cfg->file, &errs);
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
	tp->nthreads = def->workers;
	tp->threads = xcalloc((size_t)tp->nthreads, sizeof *tp->threads);
	pthread_mutex_init(&tp->lock, NULL);
	pthread_cond_init(&tp->cond, NULL);
	for (int i = 0; i < tp->nthreads; i++) {
		/* Threads inherit the main thread's mask, which blocks the
		 * signals the signalfd reads: they never take a signal. */
		tp->threads[i].tp = tp;
		rc = pthread_create(&tp->threads[i].th, NULL, thread_main,
				    &tp->threads[i]);
		if (rc != 0) {
			log_msg(LOG_ERR, "job %s: cannot start thread %d of %d: %s",
				def->name, i + 1, tp->nthreads, strerror(rc));
			break;
		}
		tp->nrunning++;
	}
	if (tp->nrunning == 0) {
		snprintf(err, errlen, "cannot start any thread");
		if (tp->pl->fini)
			tp->pl->fini(&host_table, tp->state);
		free(tp->threads);
		free(tp);
		return NULL;
	}
	tp->nthreads = tp->nrunning;
	log_debug("job %s: thread pool of %d started", def->name, tp->nthreads);
	return tp;
}

/* Finish T now, in the main thread, without running it. */
static void
finish_unrun(struct task *t, enum task_status st, const char *why)
{
	t->next = NULL;
	t->result.status = st;
	free(t->result.error);
	t->result.error = xstrdup(why);
	clock_gettime(CLOCK_REALTIME, &t->result.started);
	t->result.pid = getpid();
	run_task_done(t);
}

static void stuck_watch(void *arg);

void
tpool_submit(struct tpool *tp, struct task *t)
{
	int stuck;

	pthread_mutex_lock(&tp->lock);
	stuck = tp->stuck;
	if (stuck == 0) {
		t->next = NULL;
		if (tp->tail)
			tp->tail->next = t;
		else
			tp->head = t;
		tp->tail = t;
		pthread_cond_signal(&tp->cond);
	}
	pthread_mutex_unlock(&tp->lock);
	if (stuck > 0) {
		char *why = xasprintf("not run: %d thread%s of this job %s stuck in the "
				      "plugin past timeout + kill_grace (thread mode "
				      "cannot kill a thread)", stuck, stuck == 1 ? "" : "s",
				      stuck == 1 ? "is" : "are");
		finish_unrun(t, TASK_SKIPPED, why);
		free(why);
		return;
	}
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

/* Give up on threads past timeout + kill_grace: record their tasks as
 * timed out now, and refuse the job's tasks while any is stuck. */
static void
stuck_watch(void *arg)
{
	struct tpool *tp = arg;
	struct task *given_up[64], *queued = NULL;
	size_t ngiven = 0;
	bool idle = true;
	double limit = tp->def->timeout_s + tp->def->kill_grace_s, now = mono_now();

	pthread_mutex_lock(&tp->lock);
	for (int i = 0; i < tp->nthreads; i++) {
		struct tthread *th = &tp->threads[i];

		if (th->busy)
			idle = false;
		if (!th->busy || th->abandoned || th->task == NULL ||
		    now - th->started < limit || ngiven == 64)
			continue;
		th->abandoned = true;
		tp->stuck++;
		given_up[ngiven++] = th->task;
		th->task->exec_priv = NULL;
		th->task = NULL;
	}
	if (ngiven > 0) {
		queued = tp->head;
		tp->head = tp->tail = NULL;
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
			given_up[i]->result.run, given_up[i]->index, why);
		finish_unrun(given_up[i], TASK_TIMEOUT, why);
		free(why);
	}
	while (queued) {
		struct task *t = queued;
		queued = t->next;
		finish_unrun(t, TASK_SKIPPED, "not run: a thread of this job is stuck "
			     "in the plugin (thread mode cannot kill a thread)");
	}
	if (idle && ngiven == 0) {
		loop_timer_remove(tp->watch);
		tp->watch = NULL;
	}
}

void
tpool_cancel(struct tpool *tp, struct task *t)
{
	struct task **pp;
	bool was_queued = false;

	atomic_store((_Atomic int *)&t->cancel, 1);
	pthread_mutex_lock(&tp->lock);
	for (pp = &tp->head; *pp; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			was_queued = true;
			break;
		}
	}
	if (was_queued) {
		tp->tail = NULL;
		for (struct task *q = tp->head; q; q = q->next)
			tp->tail = q;
	} else if (t->exec_priv) {
		struct tthread *th = t->exec_priv;
		atomic_store(&th->cancel, 1);
	}
	pthread_mutex_unlock(&tp->lock);
	if (was_queued) {
		t->next = NULL;
		t->result.status = TASK_CANCELLED;
		t->result.error = xstrdup("cancelled before it started");
		clock_gettime(CLOCK_REALTIME, &t->result.started);
		t->result.pid = getpid();
		run_task_done(t);
	}
	/* A running task sees the flag through host->task_cancelled. */
}

static void
tpool_destroy(struct tpool *tp)
{
	for (int i = 0; i < tp->nthreads; i++)
		pthread_join(tp->threads[i].th, NULL);
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

	/* Copy under the lock, call back without it. */
	info = xcalloc((size_t)tp->nthreads, sizeof *info);
	pthread_mutex_lock(&tp->lock);
	n = tp->nthreads;
	for (int i = 0; i < n; i++) {
		info[i].tid = tp->threads[i].tid;
		info[i].busy = tp->threads[i].busy;
		info[i].run = tp->threads[i].run;
		info[i].index = tp->threads[i].index;
		info[i].done = tp->threads[i].done;
	}
	pthread_mutex_unlock(&tp->lock);
	for (int i = 0; i < n; i++)
		cb(&info[i], arg);
	free(info);
}
