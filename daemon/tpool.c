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
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "jobrund.h"

struct tpool {
	struct job_def *def;
	const struct jr_plugin *pl;
	void *state;                    /* the plugin's, from init */
	pthread_t *threads;
	int nthreads;
	int nrunning;                   /* threads still alive */
	pthread_mutex_t lock;           /* guards queue, stopping, nrunning */
	pthread_cond_t cond;
	struct task *head, *tail;
	bool stopping;
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

static int
cancel_check(struct jr_task *jt)
{
	struct task *t = jt->cancel_arg;

	return atomic_load_explicit((_Atomic int *)&t->cancel, memory_order_relaxed);
}

static void
run_in_thread(struct tpool *tp, struct task *t)
{
	struct jr_task jt;

	host_task_init(&jt, tp->def->name, t->input, tp->def->timeout_s);
	jt.cancel_check = cancel_check;
	jt.cancel_arg = t;
	t->result.pid = getpid();
	host_run_task(tp->pl, tp->state, &jt, &t->result);
	host_task_release(&jt);
}

static void *
thread_main(void *arg)
{
	struct tpool *tp = arg;

	for (;;) {
		struct task *t;

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
		pthread_mutex_unlock(&tp->lock);

		t->next = NULL;
		if (atomic_load((_Atomic int *)&t->cancel)) {
			/* Cancelled while queued but not yet removed. */
			t->result.status = TASK_CANCELLED;
			t->result.error = xstrdup("cancelled before it started");
			clock_gettime(CLOCK_REALTIME, &t->result.started);
			t->result.pid = getpid();
		} else {
			run_in_thread(tp, t);
		}

		pthread_mutex_lock(&done_lock);
		if (done_tail)
			done_tail->next = t;
		else
			done_head = t;
		done_tail = t;
		pthread_mutex_unlock(&done_lock);
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
		rc = pthread_create(&tp->threads[i], NULL, thread_main, tp);
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

void
tpool_submit(struct tpool *tp, struct task *t)
{
	t->next = NULL;
	pthread_mutex_lock(&tp->lock);
	if (tp->tail)
		tp->tail->next = t;
	else
		tp->head = t;
	tp->tail = t;
	pthread_cond_signal(&tp->cond);
	pthread_mutex_unlock(&tp->lock);
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
		pthread_join(tp->threads[i], NULL);
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
