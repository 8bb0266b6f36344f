/*
 * sup.c - the process executor: supervised jobrund-worker processes.
 *
 * Each process-mode job has a pool of up to `workers` worker processes,
 * started on demand from the main thread -- forked by the worker factory
 * (factory.c), or else with posix_spawn (the daemon has threads, so it
 * must exec, never plain fork) -- or, with `prestart`, all
 * at once when the daemon takes the job up, and replaced whenever one
 * exits, so that no run waits for a start -- each:
 *   - in its own process group, so a kill reaches whatever it started;
 *   - with an empty signal mask and default dispositions (the daemon
 *     blocks the signals its signalfd reads, and children must not);
 *   - with only fds 0-4: /dev/null, a pipe for stdout and stderr (read
 *     here and logged with the job's name), its socketpair end, and the
 *     memory block it shares with us (which it maps and closes);
 *   - watched through a pidfd, so its exit is an event in the loop and
 *     no signal ever reaches a recycled pid.
 *
 * A worker's life:  STARTING --READY--> READY, and from either state, its
 * exit ends it.  A ready worker is idle while it holds no task.
 *
 * Tasks travel in batches.  Each worker numbers its tasks in one sequence
 * (ids); a TASKS frame carries consecutive ones, and the worker answers
 * every task it runs with a RESULT, in id order.  Which tasks it may
 * start is the claim word in the shared block (struct proto_shm): tasks
 * next..limit-1.  We grant by raising the limit before sending a batch;
 * the worker claims each task with a compare-and-swap of next before it
 * runs it; we take back (revoke) the ones not started with a
 * compare-and-swap lowering limit to next, and queue them again, in
 * order, at the front.  So a task runs at most once, and one that has not
 * started is never lost with its worker.  We revoke when a worker is idle
 * and the queue is empty while another holds unstarted tasks (a slow task
 * never holds up those behind it), when a worker is stopped (timeout,
 * cancel, retirement) and when it dies.  After a revocation the next
 * grant moves next past the ids taken back, so that an id is never
 * granted twice.  So the last task a worker started is the largest id it
 * holds below next (last_started), not always next - 1: the worker may
 * still run one from before the ids skipped.
 *
 * The batch size adapts per pool: 1 to start, doubled while a batch is
 * worth less than BATCH_TARGET of work (by the tasks' wall time), shrunk
 * at once when tasks are slow; a worker holds at most two batches (so it
 * starts the second without a round trip to us), no more than its share
 * of what is queued, so the tail of a run is spread over the workers, and
 * nothing new while it has been running one task for long ("stalled").
 * Per task the daemon does no system call and arms no timer: a batch is
 * one write, its results one read.
 *
 * The block is untrusted, as the socket is: every value read there is
 * checked against what we sent (the claim word once per read of results
 * too), and a worker whose block makes no sense is killed at once.  What
 * it says is running decides deadlines: one timer per worker, armed while
 * it holds tasks, for the deadline of the task it runs.  A block can also
 * lie consistently (what runs cleared or never readable, next moved past
 * tasks the worker then drops): a worker holding tasks it claimed and has
 * not reported, running none we can see, and making no progress (no
 * result, no claim) for WATCH_S is killed too.  The same timer watches
 * for that: with a timeout it runs anyway; without one it is armed only
 * while a read of results leaves the worker in that state, so an idle
 * daemon, or one whose workers run long tasks, does not wake for it.  Its exit decides that task's result: `timeout` when we killed it
 * for its deadline, `cancelled` when we killed it for a cancel, `killed`
 * when someone else sent a termination signal (kill, pkill), `crashed`
 * for a fault signal or an exit.  Results it computed but had not sent
 * are in the block's spool, read at its exit.  Consecutive deaths delay
 * the next spawn (100 ms doubling up to 5 s) so a crash loop cannot spin.
 *
 * What a worker writes to stdout/stderr while it holds tasks is kept
 * (up to output_limit) until a RESULT says its task may have written it;
 * the worker then waits for our ACK before claiming the next task, so
 * output is never counted with the wrong task (see worker.c).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobrund.h"

extern char **environ;

#define OUT_LINE_MAX 4096               /* longer lines are cut */
#define OUT_READ_MAX (64 * 1024)        /* per wake-up, so one spewing
					   worker cannot starve the loop */
#define RESPAWN_DELAY_MIN 0.1
#define RESPAWN_DELAY_MAX 5.0
#define STARTUP_FAILURES_MAX 5          /* then queued tasks fail */
#define STARTUP_TIMEOUT 60.0            /* seconds to READY, then killed */
#define SETTLED_S 1.0                   /* a worker killed older than this
					   was not in a kill loop */
#define PRESTART_FD_RESERVE 64          /* descriptors prestarting leaves free */
#define DAEMON_FDS_PER_WORKER 3         /* socket, pipe, pidfd */
#define SOCKET_LOST_GRACE 1.0           /* a dying worker's socket closes
					   a moment before its exit shows */
#define BATCH_MAX 1024                  /* tasks in one TASKS frame */
#define BATCH_TARGET 0.0005             /* s of work a batch aims at */
#define STALL_MIN 0.001                 /* s: a task running longer than
					   this (and than STALL_FACTOR times
					   the mean) holds up its worker */
#define STALL_FACTOR 8
#define SUBMIT_POLL 1024                /* queued tasks between looks at the
					   workers while a run submits */
#define RUN_READ_TRIES 16               /* reads of what runs before giving
					   up on a consistent one */
#define WATCH_S 2.0                     /* s without progress that shows a
					   worker's block is lying */

/* What page_running finds. */
enum run_state {
	RUN_BAD = -1,                   /* the block makes no sense: the
					   worker is being killed */
	RUN_NONE,                       /* it runs no task */
	RUN_TASK,                       /* it runs task *ID */
	RUN_UNKNOWN,                    /* no consistent read (being
					   changed, or left half-changed) */
};

enum wstate { W_STARTING, W_READY };

/* A task handed to a worker and not reported: its id there. */
struct slot {
	struct task *task;
	uint64_t id;
};

struct worker {
	struct sup_pool *pool;
	pid_t pid;
	int pidfd, sock, outfd;
	struct pconn conn;
	struct loop_watch *sock_w, *pid_w, *out_w;
	struct proto_shm *shm;          /* shared block; NULL once unmapped */
	char line[OUT_LINE_MAX];
	size_t linelen;
	uint64_t line_skipped;          /* bytes of an over-long line not logged */
	enum wstate state;
	/* Its tasks not yet reported, in id order: a ring. */
	struct slot *ring;
	size_t rcap, rhead, rlen;
	uint64_t next_id;               /* id of the next task sent */
	uint64_t claim_next;            /* the claim word's next, as last seen */
	uint64_t claim_limit;           /* the claim word's limit, as we set it */
	/* A task being stopped (its deadline, a cancel). */
	bool stop_set;
	uint64_t stop_id;
	bool timed_out, cancelled;
	/* Holding claimed tasks while running none (see timer_fired): what
	 * it had done when that was first seen, and when. */
	bool watch_set;
	int watch_done;
	uint64_t watch_next;
	double watch_since;
	struct loop_timer *timer;       /* start-up, then task deadlines */
	bool timer_armed;
	struct loop_timer *escalate_timer;
	int escalation;                 /* 0 none, 1 asked, 2 SIGTERM, 3 SIGKILL */
	bool stopping;
	bool hard_stop;                 /* shutdown: grace is shutdown_grace */
	bool gone;                      /* reaped: being torn down */
	bool lost_socket;               /* its socket closed while it worked */
	bool corrupt;                   /* its shared block made no sense */
	bool reading;                   /* in read_socket */
	struct loop_timer *lost_timer;  /* from that EOF to its exit */
	char *fail_msg;                 /* from a FAIL message */
	bool init_hung;                 /* killed for not being READY in time */
	int tasks_done;
	int granted;                    /* tasks given (not taken back), in all */
	/* Output read while it held tasks, not yet counted with one. */
	char *pend;
	size_t pend_len, pend_dropped;
	double spawned;                 /* mono_now() at spawn */
	unsigned long seq;              /* JOBRUND_WORKER tag: pid.seq */
	struct worker *next;            /* in its pool */
	struct worker *all_prev, *all_next;     /* every live worker */
};

struct sup_pool {
	struct job_def *def;
	const struct jr_config *cfg;
	struct worker *workers;
	int nworkers;
	struct task *qhead, *qtail;
	size_t nqueued;
	bool stopping;
	double grace;
	struct loop_timer *grace_timer, *spawn_timer, *free_timer;
	struct loop_timer *kick_timer;  /* a dispatch soon, not now */
	bool kicked;                    /* kick_timer armed */
	uint64_t submitted;             /* tasks submitted, for SUBMIT_POLL */
	int failures;                   /* consecutive worker deaths */
	int startup_failures;           /* consecutive deaths before READY */
	int idle_deaths;                /* kept full: deaths with no task since */
	double next_spawn;              /* mono_now() time */
	bool shortage_logged;           /* "cannot start more workers" said */
	bool prestart;                  /* keep `workers` started (sup_prestart)... */
	bool prestart_held;             /* ...except after a worker could not
					   start, until one is READY again */
	bool held_said;                 /* the hold logged; quiet until full */
	int batch;                      /* tasks per TASKS frame now */
	double task_s;                  /* recent mean wall time of a task */
	bool dispatching;
};

static int live_workers;
static struct worker *all_workers;
static unsigned long worker_seq;
static int pools_stopping;          /* stopped, not yet freed */

static void dispatch(struct sup_pool *sp);
static void worker_gone(struct worker *w, const siginfo_t *si);
static void close_socket(struct worker *w);
static void kill_corrupt(struct worker *w);

const char *
sup_worker_path(void)
{
	static char path[4096 + 32];
	const char *env = getenv("JOBRUND_WORKER_PATH");
	char exe[4096];
	ssize_t n;

	if (env && *env)
		return env;
	if (path[0])
		return path;
	/* In a build tree the worker sits next to the daemon; installed, it
	 * lives in libexec, where the compiled-in path points. */
	n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n > 0) {
		exe[n] = '\0';
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = '\0';
			snprintf(path, sizeof path, "%s/jobrund-worker", exe);
			if (access(path, X_OK) == 0)
				return path;
		}
	}
	snprintf(path, sizeof path, "%s", JR_WORKER_PATH);
	return path;
}

int
sup_live_workers(void)
{
	return live_workers;
}

int
sup_pools_stopping(void)
{
	return pools_stopping;
}

bool
sup_is_worker(pid_t pid)
{
	for (struct worker *w = all_workers; w; w = w->all_next)
		if (w->pid == pid)
			return true;
	return false;
}

bool
sup_worker_seq_alive(unsigned long seq)
{
	for (struct worker *w = all_workers; w; w = w->all_next)
		if (w->seq == seq)
			return true;
	return false;
}

struct sup_pool *
sup_new(struct job_def *def, const struct jr_config *cfg)
{
	struct sup_pool *sp = xcalloc(1, sizeof *sp);

	sp->def = def;
	sp->cfg = cfg;
	sp->batch = 1;
	return sp;
}

/* --- the queue -------------------------------------------------------- */

static void
queue_push(struct sup_pool *sp, struct task *t)
{
	t->next = NULL;
	if (sp->qtail)
		sp->qtail->next = t;
	else
		sp->qhead = t;
	sp->qtail = t;
	sp->nqueued++;
}

static void
queue_push_front(struct sup_pool *sp, struct task *t)
{
	t->next = sp->qhead;
	sp->qhead = t;
	if (sp->qtail == NULL)
		sp->qtail = t;
	sp->nqueued++;
}

static struct task *
queue_pop(struct sup_pool *sp)
{
	struct task *t = sp->qhead;

	if (t) {
		sp->qhead = t->next;
		if (sp->qhead == NULL)
			sp->qtail = NULL;
		t->next = NULL;
		sp->nqueued--;
	}
	return t;
}

static bool
queue_remove(struct sup_pool *sp, struct task *t)
{
	struct task **pp, *prev = NULL;

	for (pp = &sp->qhead; *pp; prev = *pp, pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			if (sp->qtail == t)
				sp->qtail = prev;
			t->next = NULL;
			sp->nqueued--;
			return true;
		}
	}
	return false;
}

static void
finish_unstarted(struct task *t, enum task_status st, const char *why)
{
	t->result.status = st;
	free(t->result.error);
	t->result.error = xstrdup(why);
	clock_gettime(CLOCK_REALTIME, &t->result.started);
	t->result.pid = 0;
	run_task_done(t);
}

static void
kick_fired(void *arg)
{
	struct sup_pool *sp = arg;

	sp->kicked = false;
	dispatch(sp);
}

/* Dispatch from the loop, soon: for callers in the middle of something,
 * and for a run submitting its tasks one by one (one dispatch for all). */
static void
kick(struct sup_pool *sp)
{
	if (sp->kicked)
		return;
	if (sp->kick_timer == NULL)
		sp->kick_timer = loop_timer_new(kick_fired, sp);
	loop_timer_set(sp->kick_timer, 0, 0);
	sp->kicked = true;
}

/* --- a worker's tasks --------------------------------------------------- */

static struct slot *
ring_at(struct worker *w, size_t i)
{
	return &w->ring[(w->rhead + i) & (w->rcap - 1)];
}

static void
ring_push(struct worker *w, struct task *t, uint64_t id)
{
	if (w->rlen == w->rcap) {
		size_t cap = w->rcap ? w->rcap * 2 : 16;
		struct slot *ring = xmalloc(cap * sizeof *ring);

		for (size_t i = 0; i < w->rlen; i++)
			ring[i] = *ring_at(w, i);
		free(w->ring);
		w->ring = ring;
		w->rcap = cap;
		w->rhead = 0;
	}
	*ring_at(w, w->rlen) = (struct slot){ t, id };
	w->rlen++;
}

static struct slot
ring_pop_front(struct worker *w)
{
	struct slot s = *ring_at(w, 0);

	w->rhead = (w->rhead + 1) & (w->rcap - 1);
	w->rlen--;
	return s;
}

static struct slot
ring_pop_back(struct worker *w)
{
	w->rlen--;
	return *ring_at(w, w->rlen);
}

/* The claim word: 0 with its NEXT (tasks below it have been claimed),
 * or -1 when it cannot be what the worker may have made of what we set
 * (then the worker is killed) or was found so before. */
static int
page_claim(struct worker *w, uint64_t *word, uint64_t *next)
{
	uint64_t v, n;

	if (w->shm == NULL || w->corrupt)
		return -1;
	v = atomic_load_explicit(&w->shm->claim, memory_order_acquire);
	n = proto_claim_next(v, w->claim_next);
	if ((uint32_t)(v >> 32) != (uint32_t)w->claim_limit || n > w->claim_limit) {
		kill_corrupt(w);
		return -1;
	}
	w->claim_next = n;
	*word = v;
	*next = n;
	return 0;
}

/* What the worker runs: RUN_TASK with its id and start (CLOCK_MONOTONIC
 * s), RUN_NONE, RUN_UNKNOWN when no consistent read could be had (a
 * moment's change, or a block left half-changed), RUN_BAD when the block
 * makes no sense (and the worker is being killed). */
static enum run_state
page_running(struct worker *w, uint64_t *id, double *start)
{
	uint64_t word, next, g1, g2, seq = 0, ns = 0;
	int tries;

	if (w->shm == NULL)
		return RUN_BAD;
	/* The claim word after what runs: a task is claimed before the
	 * worker says it runs it.  Few tries: a writer preempted halfway
	 * stays so for a time slice, and spinning does not help. */
	for (tries = 0; tries < RUN_READ_TRIES; tries++) {
		g1 = atomic_load_explicit(&w->shm->run_gen, memory_order_acquire);
		if (g1 & 1)
			continue;
		seq = atomic_load_explicit(&w->shm->run_seq, memory_order_relaxed);
		ns = atomic_load_explicit(&w->shm->run_start, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		g2 = atomic_load_explicit(&w->shm->run_gen, memory_order_relaxed);
		if (g1 == g2)
			break;
	}
	if (page_claim(w, &word, &next) == -1)
		return RUN_BAD;
	if (tries == RUN_READ_TRIES)
		return RUN_UNKNOWN;
	if (seq == 0)
		return RUN_NONE;
	*id = seq - 1;
	*start = (double)ns / 1e9;
	/* It must be a task it claimed and has not reported, started
	 * after the worker did and not in the future. */
	if (w->rlen == 0 || *id < ring_at(w, 0)->id || *id >= next ||
	    *start < w->spawned - 1 || *start > mono_now() + 1) {
		kill_corrupt(w);
		return RUN_BAD;
	}
	return RUN_TASK;
}

/* The last task W started: of those it holds, the one with the largest
 * id below NEXT (the claim word's); its place in the ring, or -1.  Not
 * always NEXT - 1: a grant after a revocation moves next past the ids
 * taken back while the worker may still run a task from before them. */
static ssize_t
last_started(struct worker *w, uint64_t next)
{
	for (size_t i = w->rlen; i > 0; i--)
		if (ring_at(w, i - 1)->id < next)
			return (ssize_t)(i - 1);
	return -1;
}

/* The task of W's with id ID, or NULL. */
static struct task *
ring_find(struct worker *w, uint64_t id)
{
	for (size_t i = 0; i < w->rlen; i++)
		if (ring_at(w, i)->id == id)
			return ring_at(w, i)->task;
	return NULL;
}

/* Take back the tasks W has not started whose ids are FROM or more (0:
 * all), putting them at the front of the queue in order; how many. */
static size_t
take_back(struct worker *w, uint64_t from)
{
	struct sup_pool *sp = w->pool;
	uint64_t word, next, limit;
	size_t n = 0;

	for (;;) {
		if (page_claim(w, &word, &next) == -1)
			return 0;       /* corrupt, so killed: worker_gone
					   fails them (which ran cannot be
					   told) */
		limit = from > next ? from : next;
		if (limit >= w->claim_limit)
			return 0;
		if (atomic_compare_exchange_strong_explicit(&w->shm->claim, &word,
			    proto_claim(next, limit), memory_order_acq_rel,
			    memory_order_acquire))
			break;
	}
	w->claim_limit = limit;
	while (w->rlen > 0 && ring_at(w, w->rlen - 1)->id >= limit) {
		struct slot s = ring_pop_back(w);

		s.task->exec_priv = NULL;
		queue_push_front(sp, s.task);
		w->granted--;
		n++;
	}
	return n;
}

/* Let W start N more tasks, ids next_id..: 0, or -1 when it cannot be
 * given any now (tasks of its own still wait below a revoked range, or
 * its block is corrupt). */
static int
grant(struct worker *w, uint32_t n)
{
	uint64_t word, next, want;

	for (;;) {
		if (page_claim(w, &word, &next) == -1)
			return -1;
		if (w->claim_limit == w->next_id) {
			want = proto_claim(next, w->next_id + n);
		} else if (next == w->claim_limit) {
			/* Past the ids taken back: none is granted twice. */
			want = proto_claim(w->next_id, w->next_id + n);
		} else {
			return -1;
		}
		if (atomic_compare_exchange_strong_explicit(&w->shm->claim, &word, want,
			    memory_order_acq_rel, memory_order_acquire))
			break;
	}
	if (w->claim_limit != w->next_id)
		w->claim_next = w->next_id;
	w->claim_limit = w->next_id + n;
	return 0;
}

/* --- sending ---------------------------------------------------------- */

static void
worker_flush(struct worker *w)
{
	int rc = pconn_flush(&w->conn);

	if (rc == -1) {
		/* The worker is going away; its exit will be reported. */
		if (errno != EPIPE && errno != ECONNRESET && errno != EBADF)
			log_warn("job %s: worker %d: write", w->pool->def->name, (int)w->pid);
		w->conn.out.len = 0;
		w->conn.out_off = 0;
		return;
	}
	if (w->sock_w)
		loop_modify(w->sock_w, EPOLLIN | (rc == 1 ? EPOLLOUT : 0));
}

static void
signal_group(struct worker *w, int sig)
{
	/* Once reaped, its pid and group id may belong to someone else. */
	if (w->gone)
		return;
	/* The worker is our unreaped child, so its pid (= its process group
	 * id) cannot have been recycled: we reap only after its pidfd says
	 * it exited, and we stop signalling then. */
	if (kill(-w->pid, sig) == -1 && errno != ESRCH)
		log_warn("job %s: kill(-%d, %d)", w->pool->def->name, (int)w->pid, sig);
	/* Also through the pidfd, in case the worker left its group. */
	pidfd_send_signal(w->pidfd, sig, NULL, 0);
}

/* A worker whose shared block makes no sense: it dies, and its tasks
 * with it (see worker_gone). */
static void
kill_corrupt(struct worker *w)
{
	w->corrupt = true;
	if (w->escalation >= 3 || w->gone)
		return;
	log_msg(LOG_ERR, "job %s: worker %d: its shared state with jobrund is "
		"corrupt: stopping it", w->pool->def->name, (int)w->pid);
	w->corrupt = true;
	w->escalation = 3;
	signal_group(w, SIGKILL);
}

/* The next step of stopping a busy worker: SIGTERM, then SIGKILL. */
static void
escalate(void *arg)
{
	struct worker *w = arg;
	double grace = w->hard_stop ? w->pool->cfg->shutdown_grace :
		       w->pool->def->kill_grace_s;

	loop_timer_remove(w->escalate_timer);
	w->escalate_timer = NULL;
	if (w->escalation < 2) {
		w->escalation = 2;
		log_msg(LOG_NOTICE, "job %s: worker %d: sending SIGTERM to its process group",
			w->pool->def->name, (int)w->pid);
		signal_group(w, SIGTERM);
		w->escalate_timer = loop_timer_add(grace, 0, escalate, w);
	} else if (w->escalation < 3) {
		w->escalation = 3;
		log_msg(LOG_WARNING, "job %s: worker %d: still alive %.1fs after SIGTERM: "
			"sending SIGKILL to its process group",
			w->pool->def->name, (int)w->pid, grace);
		signal_group(w, SIGKILL);
	}
}

static void
arm_deadline(struct worker *w, double after)
{
	loop_timer_set(w->timer, after, 0);
	w->timer_armed = true;
}

static void
disarm_deadline(struct worker *w)
{
	if (w->timer_armed) {
		loop_timer_set(w->timer, -1, 0);
		w->timer_armed = false;
	}
}

/* The task W runs, ID, passed its deadline: stop it. */
static void
task_timed_out(struct worker *w, uint64_t id)
{
	struct sup_pool *sp = w->pool;
	struct task *t;
	double start;
	uint64_t now_id;
	size_t n;

	/* Nothing else starts there now. */
	if ((n = take_back(w, 0)) > 0) {
		kick(sp);
		log_info("job %s: worker %d: %zu task%s it had not started go to "
			 "other workers", sp->def->name, (int)w->pid, n, n == 1 ? "" : "s");
	}
	/* It may have ended since we looked, and the next one started
	 * before the take-back: that one is innocent, and has a deadline of
	 * its own.  Now that nothing new can start, look again. */
	switch (page_running(w, &now_id, &start)) {
	case RUN_BAD:
		return;         /* being killed */
	case RUN_TASK:
		if (now_id == id)
			break;
		/* FALLTHROUGH */
	default:
		arm_deadline(w, 0);     /* the next look sees what runs now */
		return;
	}
	if ((t = ring_find(w, id)) == NULL) {
		kill_corrupt(w);        /* it runs a task it was not given */
		return;
	}
	w->stop_set = true;
	w->stop_id = id;
	w->timed_out = true;
	w->cancelled = false;
	log_msg(LOG_NOTICE, "job %s: task %zu timed out after %gs", sp->def->name,
		t->result.index, sp->def->timeout_s);
	if (w->escalation >= 1)
		return;         /* already being stopped: let that go on */
	/* Straight to SIGTERM: the plugin saw the same deadline through
	 * task_cancelled and had its chance to return. */
	w->escalation = 1;
	escalate(w);
}

static void
startup_expired(struct worker *w)
{
	log_msg(LOG_ERR, "job %s: worker %d not ready after %gs (a plugin init that "
		"hangs?): killing it", w->pool->def->name, (int)w->pid, STARTUP_TIMEOUT);
	w->init_hung = true;
	signal_group(w, SIGKILL);
}

/* Note what W has done, on first seeing it hold tasks it claimed and
 * has not reported while it runs none we can see. */
static void
watch_mark(struct worker *w, uint64_t next, double now)
{
	w->watch_set = true;
	w->watch_done = w->tasks_done;
	w->watch_next = next;
	w->watch_since = now;
}

/*
 * The worker's timer: its start-up limit, then the deadline of the task
 * it runs, read from the shared block; and the watch on a block that
 * lies.  A worker holding tasks it claimed and has not reported, while
 * what runs reads as nothing (or cannot be read), is between two tasks
 * for a moment; one that stays so with no result and no claim for
 * WATCH_S has dropped its tasks or hides what it runs: it is killed.
 */
static void
timer_fired(void *arg)
{
	struct worker *w = arg;
	double timeout = w->pool->def->timeout_s, start, now, left;
	uint64_t id, word, next;
	enum run_state rs;

	w->timer_armed = false;
	if (w->gone)
		return;
	if (w->state == W_STARTING) {
		startup_expired(w);
		return;
	}
	if (w->rlen == 0 || w->stop_set) {
		w->watch_set = false;
		return;
	}
	rs = page_running(w, &id, &start);
	if (rs == RUN_BAD)
		return;
	now = mono_now();
	if (rs == RUN_TASK) {
		double ran = now - start;

		w->watch_set = false;
		if (timeout <= 0)
			return;         /* a watch: it runs a task, all is well */
		if (ran >= timeout) {
			task_timed_out(w, id);
			return;
		}
		arm_deadline(w, timeout - ran);
		return;
	}
	if (page_claim(w, &word, &next) == -1)
		return;
	if (ring_at(w, 0)->id >= next) {
		/* Between tasks, holding none it claimed: none can have run
		 * longer than this.  Without a timeout, watched until it is
		 * seen running one. */
		w->watch_set = false;
		arm_deadline(w, timeout > 0 ? timeout : WATCH_S);
		return;
	}
	if (!w->watch_set || w->watch_done != w->tasks_done || w->watch_next != next) {
		watch_mark(w, next, now);
	} else if (now - w->watch_since >= WATCH_S) {
		log_msg(LOG_ERR, "job %s: worker %d holds tasks it claimed and has "
			"not reported, yet by its shared state runs none (%s), and "
			"has done nothing for %gs", w->pool->def->name, (int)w->pid,
			rs == RUN_NONE ? "none set" : "unreadable", WATCH_S);
		kill_corrupt(w);
		return;
	}
	left = w->watch_since + WATCH_S - now;
	if (left < 0.01)
		left = 0.01;
	arm_deadline(w, timeout > 0 && timeout < left ? timeout : left);
}

/* Give W N tasks from the head of the queue, as one TASKS frame. */
static void
send_batch(struct worker *w, uint32_t n)
{
	struct sup_pool *sp = w->pool;
	size_t at;

	if (grant(w, n) == -1)
		return;         /* not now, or corrupt (and being killed) */
	if (w->rlen == 0 && !w->timer_armed) {
		/* Its deadline; without one, the watch (timer_fired), as
		 * long as it holds tasks and is not seen running one.  An
		 * armed watch stays so: it looks at what holds then. */
		w->watch_set = false;
		arm_deadline(w, sp->def->timeout_s > 0 ? sp->def->timeout_s : WATCH_S);
	}
	at = proto_tasks_begin(&w->conn.out, w->next_id, sp->def->timeout_s);
	for (uint32_t i = 0; i < n; i++) {
		struct task *t = queue_pop(sp);

		/* A run's tasks are one array, queued in order: fetch those a
		 * few places on before they are needed (a hint only, harmless
		 * when they lie elsewhere). */
		__builtin_prefetch((const void *)((uintptr_t)t + 16 * sizeof *t), 1);
		proto_tasks_add(&w->conn.out, t->result.input);
		ring_push(w, t, w->next_id + i);
		t->exec_priv = w;
		t->result.pid = w->pid;
	}
	proto_tasks_end(&w->conn.out, at, n);
	w->next_id += n;
	w->granted += (int)n;
	worker_flush(w);
}

/* --- output ----------------------------------------------------------- */

static void
log_output_line(struct worker *w)
{
	w->line[w->linelen] = '\0';
	log_msg(LOG_INFO, "job %s: worker %d: %s", w->pool->def->name, (int)w->pid,
		w->line);
	w->linelen = 0;
}

/* The end of an over-long line (a newline, or the end of the stream):
 * say how much of it was not logged. */
static void
log_skipped(struct worker *w)
{
	log_msg(LOG_INFO, "job %s: worker %d: ... (%" PRIu64 " more bytes of that "
		"line not logged)", w->pool->def->name, (int)w->pid, w->line_skipped);
	w->line_skipped = 0;
}

/* The end of a task's output: its last unfinished line too. */
static void
end_output_line(struct worker *w)
{
	if (w->line_skipped)
		log_skipped(w);
	else if (w->linelen)
		log_output_line(w);
}

/* Keep what the worker writes while it holds tasks, up to the job's
 * output_limit; count the rest.  Whose it is, a RESULT says. */
static void
keep_output(struct worker *w, const char *buf, size_t n)
{
	size_t limit = w->pool->def->output_limit;
	size_t room = limit > w->pend_len ? limit - w->pend_len : 0;
	size_t take = n < room ? n : room;

	if (take > 0) {
		w->pend = xrealloc(w->pend, w->pend_len + take + 1);
		memcpy(w->pend + w->pend_len, buf, take);
		w->pend_len += take;
		w->pend[w->pend_len] = '\0';
	}
	w->pend_dropped += n - take;
}

/* What was kept is task T's. */
static void
give_output(struct worker *w, struct task *t)
{
	struct task_result *r = &t->result;

	if (w->pend_len == 0 && w->pend_dropped == 0)
		return;
	free(r->worker_output);
	r->worker_output = w->pend;
	r->worker_output_len = w->pend_len;
	r->worker_output_dropped = w->pend_dropped;
	if (w->pend_dropped)
		log_msg(LOG_NOTICE, "job %s: worker %d: task %zu wrote more than "
			"output_limit (%zu bytes): kept the first %zu",
			w->pool->def->name, (int)w->pid, t->result.index,
			w->pool->def->output_limit, w->pend_len);
	w->pend = NULL;
	w->pend_len = w->pend_dropped = 0;
}

static void
close_output(struct worker *w)
{
	end_output_line(w);
	loop_remove(w->out_w);
	w->out_w = NULL;
	close(w->outfd);
	w->outfd = -1;
}

static void
read_output(struct worker *w, bool drain)
{
	char buf[8192];
	size_t total = 0, limit = OUT_READ_MAX;
	int avail;

	/* Draining takes what is there now, not what a child still holding
	 * the pipe goes on writing: the loop must not be held here. */
	if (drain && ioctl(w->outfd, FIONREAD, &avail) == 0) {
		if (avail == 0)
			return;
		limit = (size_t)avail;
	}
	/* Tell the worker: a task during which this moved may have written
	 * output, though the pipe looks empty after it. */
	if (w->shm)
		atomic_fetch_add_explicit(&w->shm->out_gen, 1, memory_order_acq_rel);
	while (total < limit) {
		ssize_t n = read(w->outfd, buf, sizeof buf);
		if (n <= 0) {
			if (n == 0 || (errno != EAGAIN && errno != EINTR))
				close_output(w);
			break;
		}
		total += (size_t)n;
		if (w->rlen > 0)
			keep_output(w, buf, (size_t)n);
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] == '\n') {
				if (w->line_skipped)
					log_skipped(w);
				else
					log_output_line(w);
				continue;
			}
			/* A line longer than the buffer: log its start, count
			 * the rest.  A worker writing gigabytes without a
			 * newline neither grows the daemon nor floods the log. */
			if (w->line_skipped || w->linelen == OUT_LINE_MAX - 1) {
				if (w->line_skipped == 0)
					log_output_line(w);
				w->line_skipped++;
				continue;
			}
			w->line[w->linelen++] = buf[i];
		}
	}
	if (w->shm)
		atomic_fetch_add_explicit(&w->shm->out_gen, 1, memory_order_acq_rel);
}

static void
on_output(int fd, uint32_t events, void *arg)
{
	(void)fd;
	(void)events;
	read_output(arg, false);
}

/* --- worker limits ---------------------------------------------------- */

/* A worker's resident set size in bytes, from /proc; 0 if unknown. */
static uint64_t
worker_rss(pid_t pid)
{
	char path[64], line[256];
	uint64_t kb = 0;
	FILE *fp;

	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	if ((fp = fopen(path, "re")) == NULL)
		return 0;
	while (fgets(line, sizeof line, fp))
		if (sscanf(line, "VmRSS: %" SCNu64 " kB", &kb) == 1)
			break;
	fclose(fp);
	return kb * 1024;
}

/* Retire a worker gracefully: nothing new starts there, and once its
 * last task is reported it exits at the socket's EOF. */
static void
retire_worker(struct worker *w)
{
	w->stopping = true;
	if (take_back(w, 0) > 0)
		kick(w->pool);
	if (w->rlen == 0)
		close_socket(w);
}

/* max_tasks_per_worker and max_rss, checked as results come in. */
static void
check_worker_limits(struct worker *w)
{
	const struct job_def *def = w->pool->def;
	uint64_t rss;

	if (w->stopping || w->gone)
		return;
	if (def->max_tasks_per_worker > 0 && w->tasks_done >= def->max_tasks_per_worker) {
		log_debug("job %s: worker %d retired after %d tasks (max_tasks_per_worker)",
			  def->name, (int)w->pid, w->tasks_done);
		retire_worker(w);
		return;
	}
	if (def->max_rss > 0 && (rss = worker_rss(w->pid)) > def->max_rss) {
		log_msg(LOG_NOTICE, "job %s: worker %d uses %" PRIu64 " KiB, over max_rss "
			"(%" PRIu64 " KiB): replacing it", def->name, (int)w->pid,
			rss / 1024, def->max_rss / 1024);
		retire_worker(w);
	}
}

/* --- receiving -------------------------------------------------------- */

/* What a read's results say about the pool's tasks. */
struct rstats {
	size_t n;
	double wall;
};

/* Is a result for task ID the one W owes next?  The oldest it holds, and
 * claimed (the claim word is looked at only when the last look is too
 * old to say). */
static bool
result_expected(struct worker *w, uint64_t id)
{
	uint64_t word, next;

	if (w->rlen == 0 || id != ring_at(w, 0)->id)
		return false;
	if (id < w->claim_next)
		return true;
	return page_claim(w, &word, &next) == 0 && id < next;
}

/* Record a result; false (and the worker killed) when it is not one W
 * owes. */
static bool
take_result(struct worker *w, const struct msg_result *m, struct rstats *st)
{
	struct task *t;
	struct task_result *r;

	if (!result_expected(w, m->id)) {
		if (w->escalation >= 3)
			return false;   /* being killed already: the rest of
					   what it says is not believed */
		log_msg(LOG_ERR, "job %s: worker %d sent a result for task %" PRIu64
			" it was not running: stopping it", w->pool->def->name,
			(int)w->pid, m->id);
		w->escalation = 3;
		signal_group(w, SIGKILL);
		return false;
	}
	if (m->flags & PROTO_RESULT_OUTPUT) {
		/* What the task printed before returning is in the pipe
		 * already: take it now, so it is kept with this task and not
		 * the next (which waits for our ACK to start). */
		if (w->outfd != -1)
			read_output(w, true);
		end_output_line(w);
	}
	t = ring_pop_front(w).task;
	r = &t->result;
	if (m->flags & PROTO_RESULT_OUTPUT) {
		struct msg_ack ack = { .id = m->id };

		give_output(w, t);
		if (w->sock != -1 && !w->gone)
			proto_put_ack(&w->conn.out, &ack);
	}
	/* A first attempt has no error: no call for nothing. */
	if (r->error)
		free(r->error);
	r->status = (enum task_status)m->status;
	result_set_output(r, m->output, m->output_len);
	r->error = NULL;
	if (m->error) {
		r->error = xmalloc(m->error_len + 1);
		memcpy(r->error, m->error, m->error_len);
		r->error[m->error_len] = '\0';
	}
	r->started.tv_sec = (time_t)m->started_sec;
	r->started.tv_nsec = m->started_nsec;
	r->wall_s = m->wall_s;
	r->cpu_s = m->cpu_s;
	r->pid = w->pid;
	if (w->stop_set && m->id == w->stop_id) {
		if (w->timed_out && r->status != TASK_OK)
			r->status = TASK_TIMEOUT;
		else if (w->cancelled && r->status != TASK_OK)
			r->status = TASK_CANCELLED;
		w->stop_set = w->timed_out = w->cancelled = false;
		loop_timer_remove(w->escalate_timer);
		w->escalate_timer = NULL;
		if (w->escalation >= 2)
			w->stopping = true;     /* signalled: it is going away */
		else
			w->escalation = 0;
	}
	w->tasks_done++;
	w->pool->failures = 0;
	w->pool->idle_deaths = 0;
	t->exec_priv = NULL;
	st->n++;
	st->wall += m->wall_s;
	run_task_done(t);
	return true;
}

/* After a read's frames: adapt the batch size, check the worker's
 * limits and its deadline timer. */
static void
after_results(struct worker *w, const struct rstats *st)
{
	struct sup_pool *sp = w->pool;

	if (st->n > 0) {
		double mean = st->wall / (double)st->n;
		double fit = BATCH_TARGET / (mean > 1e-9 ? mean : 1e-9);

		sp->task_s = mean;
		if (fit < sp->batch)
			sp->batch = fit < 1 ? 1 : (int)fit;
		else if (fit >= 2.0 * sp->batch && sp->batch < BATCH_MAX)
			sp->batch = sp->batch * 2 < BATCH_MAX ? sp->batch * 2 : BATCH_MAX;
		check_worker_limits(w);
	}
	if (w->rlen == 0) {
		/* A deadline goes; the watch (no timeout) is left to fire
		 * once and lapse: arming and disarming it for each batch
		 * would cost two system calls a batch. */
		if (sp->def->timeout_s > 0)
			disarm_deadline(w);
		w->watch_set = false;
		/* What it wrote that no result claimed is nobody's: logged,
		 * and not kept for a later task. */
		free(w->pend);
		w->pend = NULL;
		w->pend_len = w->pend_dropped = 0;
		if (w->stopping && w->escalation < 2 && !w->gone)
			close_socket(w);
	} else if (!w->gone) {
		uint64_t word, next;

		/* One look at the claim word per read: a block changed under
		 * us is caught now, not when we next write it. */
		if (page_claim(w, &word, &next) == -1 || w->timer_armed || w->stop_set)
			return;
		if (sp->def->timeout_s > 0) {
			/* A stop just ended (its task reported) and others
			 * follow. */
			arm_deadline(w, sp->def->timeout_s);
			return;
		}
		/* No deadline: watch it all the same (timer_fired) until it
		 * is seen running a task, so that a block that lies cannot
		 * hold its tasks for ever. */
		if (ring_at(w, 0)->id < next)
			watch_mark(w, next, mono_now());
		else
			w->watch_set = false;
		arm_deadline(w, WATCH_S);
	}
}

static void
handle_frame(struct worker *w, uint8_t type, const uint8_t *p, size_t len,
	     struct rstats *st)
{
	struct sup_pool *sp = w->pool;

	switch (type) {
	case MSG_READY: {
		struct msg_ready m;
		if (w->state != W_STARTING || proto_get_ready(p, len, &m) == -1 ||
		    m.version != PROTO_VERSION) {
			log_msg(LOG_ERR, "job %s: worker %d: bad READY: stopping it",
				sp->def->name, (int)w->pid);
			signal_group(w, SIGKILL);
			return;
		}
		w->state = W_READY;
		disarm_deadline(w);
		sp->startup_failures = 0;
		sp->prestart_held = false;
		log_debug("job %s: worker %d ready", sp->def->name, (int)w->pid);
		return;
	}
	case MSG_FAIL: {
		struct msg_fail m;
		if (proto_get_fail(p, len, &m) == 0) {
			free(w->fail_msg);
			w->fail_msg = xstrdup(m.message);
			log_msg(LOG_ERR, "job %s: worker %d cannot start: %s",
				sp->def->name, (int)w->pid, m.message);
			proto_fail_free(&m);
		}
		return;
	}
	case MSG_LOG: {
		struct msg_log m;
		if (proto_get_log(p, len, &m) == 0) {
			int prio = m.priority < LOG_ERR ? LOG_ERR :
				   m.priority > LOG_DEBUG ? LOG_DEBUG : m.priority;
			log_msg(prio, "job %s: %s", sp->def->name, m.text);
			proto_log_free(&m);
		}
		return;
	}
	case MSG_RESULT: {
		struct msg_result m;
		if (w->state != W_READY || proto_get_result(p, len, &m) == -1) {
			log_msg(LOG_ERR, "job %s: worker %d sent a malformed result: "
				"stopping it", sp->def->name, (int)w->pid);
			signal_group(w, SIGKILL);
			return;
		}
		take_result(w, &m, st);
		return;
	}
	}
	log_msg(LOG_ERR, "job %s: worker %d sent unknown message %u: stopping it",
		sp->def->name, (int)w->pid, type);
	signal_group(w, SIGKILL);
}

/* Read and handle what the worker sent.  Returns false at EOF. */
static bool
read_socket(struct worker *w)
{
	struct rstats st = { 0, 0 };
	bool open = true;

	/* A result recorded here may submit tasks (a queued run starting),
	 * and sup_submit reads sockets: not this one again, whose frames
	 * are being handled. */
	if (w->reading)
		return true;
	w->reading = true;
	for (;;) {
		uint8_t type;
		const uint8_t *p;
		size_t len;
		int rc;
		ssize_t n;

		/* A frame may have retired the worker (closing the socket). */
		if (w->sock == -1) {
			open = false;
			break;
		}
		n = pconn_read(&w->conn);
		if (n == 0) {
			open = false;
			break;
		}
		if (n < 0) {
			if (errno == EAGAIN)
				break;
			if (errno != ECONNRESET)
				log_warn("job %s: worker %d: read", w->pool->def->name, (int)w->pid);
			open = false;
			break;
		}
		while ((rc = pconn_next(&w->conn, &type, &p, &len)) == 1)
			handle_frame(w, type, p, len, &st);
		if (rc == -1) {
			log_msg(LOG_ERR, "job %s: worker %d: corrupt stream (%s): stopping it",
				w->pool->def->name, (int)w->pid, strerror(errno));
			signal_group(w, SIGKILL);
			open = false;
			break;
		}
	}
	w->reading = false;
	after_results(w, &st);
	if (w->sock != -1 && w->conn.out.len > 0)
		worker_flush(w);        /* ACKs */
	return open;
}

/* The results a dead worker computed but had not sent: in its spool. */
static void
read_spool(struct worker *w)
{
	struct rstats st = { 0, 0 };
	const uint8_t *spool, *p;
	uint64_t len;
	size_t off = 0, plen;
	uint8_t type;

	if (w->shm == NULL)
		return;
	len = atomic_load_explicit(&w->shm->spool_len, memory_order_acquire);
	if (len > PROTO_SPOOL_SIZE)
		return;
	spool = PROTO_SHM_SPOOL(w->shm);
	while (w->rlen > 0 && proto_next_frame(spool, (size_t)len, &off, &type, &p, &plen) == 1) {
		struct msg_result m;

		if (type != MSG_RESULT || proto_get_result(p, plen, &m) == -1)
			break;
		if (m.id < ring_at(w, 0)->id)
			continue;       /* sent, and read already */
		if (!take_result(w, &m, &st))
			break;
	}
	after_results(w, &st);
}

static void
close_socket(struct worker *w)
{
	if (w->sock == -1)
		return;
	loop_remove(w->sock_w);
	w->sock_w = NULL;
	close(w->sock);
	w->sock = -1;
	w->conn.fd = -1;        /* never write to a number now reused */
}

/* The worker's socket closed and it is still alive: it can never report
 * (a plugin closed fd 3).  End it; worker_gone says why. */
static void
socket_lost(void *arg)
{
	struct worker *w = arg;

	loop_timer_remove(w->lost_timer);
	w->lost_timer = NULL;
	if (w->gone)
		return;
	log_msg(LOG_ERR, "job %s: worker %d closed its connection but did not exit: "
		"killing it", w->pool->def->name, (int)w->pid);
	w->lost_socket = true;
	signal_group(w, SIGKILL);
}

static void
on_socket(int fd, uint32_t events, void *arg)
{
	struct worker *w = arg;
	struct sup_pool *sp = w->pool;

	(void)fd;
	if (events & EPOLLOUT)
		worker_flush(w);
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		if (!read_socket(w)) {
			/* EOF: the exit itself arrives through the pidfd.  A
			 * worker that closed its socket mid-task (a plugin that
			 * closed fd 3) could never report: end it. */
			close_socket(w);
			if ((w->rlen > 0 || w->state == W_STARTING) &&
			    !w->stopping && !w->gone && w->lost_timer == NULL)
				w->lost_timer = loop_timer_add(SOCKET_LOST_GRACE, 0,
							       socket_lost, w);
		}
	}
	/* Tasks reported: hand out more, or take back unstarted ones for a
	 * worker that ran dry. */
	dispatch(sp);
}

static void
on_exit_event(int fd, uint32_t events, void *arg)
{
	struct worker *w = arg;
	siginfo_t si;

	(void)events;
	memset(&si, 0, sizeof si);
	if (waitid(P_PIDFD, (id_t)fd, &si, WEXITED | WNOHANG) == -1) {
		/* ECHILD: someone else reaped it (a thread-mode plugin calling
		 * wait(-1)).  It is gone all the same; its status is lost. */
		log_warn("job %s: waitid(pidfd of %d)", w->pool->def->name, (int)w->pid);
		memset(&si, 0, sizeof si);
		si.si_pid = w->pid;
		si.si_code = 0;
		worker_gone(w, &si);
		return;
	}
	if (si.si_pid == 0)
		return;         /* spurious: not yet exited */
	worker_gone(w, &si);
}

/* --- spawning --------------------------------------------------------- */

/* Variables that speak to jobrund itself, never to its workers: systemd's
 * notification and watchdog sockets, socket activation, our own tags. */
bool
sup_daemon_only_variable(const char *var)
{
	static const char *const names[] = {
		"JOBRUND_JOB=", "JOBRUND_WORKER=", "NOTIFY_SOCKET=", "WATCHDOG_USEC=",
		"WATCHDOG_PID=", "LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=",
	};

	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strncmp(var, names[i], strlen(names[i])) == 0)
			return true;
	return false;
}

/*
 * A worker's environment: jobrund's own, or with `env` a clean one (a
 * default PATH unless the job sets one, plus its variables).  Always the
 * JOBRUND_JOB and JOBRUND_WORKER tags, which its descendants inherit: they
 * are how jobrund recognises a job's escaped processes (reaper.c).  A
 * NULL-terminated array of malloc'd strings.
 */
static char **
worker_environment(const struct job_def *def, unsigned long seq)
{
	size_t n = 0, cap;
	char **envp;
	bool has_path = false;

	if (def->has_env) {
		cap = def->nenv + 4;
		envp = xcalloc(cap, sizeof *envp);
		for (size_t i = 0; i < def->nenv; i++) {
			has_path |= strncmp(def->env[i], "PATH=", 5) == 0;
			envp[n++] = xstrdup(def->env[i]);
		}
		if (!has_path)
			envp[n++] = xstrdup("PATH=/usr/local/bin:/usr/bin:/bin");
	} else {
		size_t count = 0;
		for (char **e = environ; *e; e++)
			count++;
		cap = count + 3;
		envp = xcalloc(cap, sizeof *envp);
		for (char **e = environ; *e; e++)
			if (!sup_daemon_only_variable(*e))
				envp[n++] = xstrdup(*e);
	}
	envp[n++] = xasprintf("JOBRUND_JOB=%s", def->name);
	envp[n++] = xasprintf("JOBRUND_WORKER=%ld.%lu", (long)getpid(), seq);
	envp[n] = NULL;
	return envp;
}

/* A worker being started: what it gets from the daemon. */
struct spawn {
	int sv[2], outp[2], memfd;      /* socket, output pipe, memory block */
	void *shm;
	unsigned long seq;
	char **envp;
};

/* S holds nothing. */
static void
spawn_clear(struct spawn *s)
{
	s->sv[0] = s->sv[1] = s->outp[0] = s->outp[1] = s->memfd = -1;
	s->shm = MAP_FAILED;
	s->envp = NULL;
}

/* Close and free what spawn_prepare made for a worker not started;
 * errno kept. */
static void
spawn_discard(struct spawn *s)
{
	int err = errno;

	if (s->shm != MAP_FAILED)
		munmap(s->shm, PROTO_SHM_SIZE);
	if (s->memfd != -1)
		close(s->memfd);
	for (int i = 0; i < 2; i++) {
		if (s->sv[i] != -1)
			close(s->sv[i]);
		if (s->outp[i] != -1)
			close(s->outp[i]);
	}
	strv_free(s->envp);
	spawn_clear(s);
	errno = err;
}

/* What a worker of SP is started with: 0, or -1 with errno. */
static int
spawn_prepare(struct sup_pool *sp, struct spawn *s)
{
	spawn_clear(s);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s->sv) == -1 ||
	    pipe2(s->outp, O_CLOEXEC) == -1 ||
	    /* The block shared with the worker (struct proto_shm). */
	    (s->memfd = memfd_create("jobrund-worker", MFD_CLOEXEC)) == -1 ||
	    ftruncate(s->memfd, PROTO_SHM_SIZE) == -1 ||
	    (s->shm = mmap(NULL, PROTO_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
			   s->memfd, 0)) == MAP_FAILED) {
		spawn_discard(s);
		return -1;
	}
	s->seq = ++worker_seq;
	s->envp = worker_environment(sp->def, s->seq);
	return 0;
}

void
sup_spawnattr_init(posix_spawnattr_t *attr)
{
	sigset_t none, all;

	posix_spawnattr_init(attr);
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(attr, &none);
	posix_spawnattr_setsigdefault(attr, &all);
	posix_spawnattr_setpgroup(attr, 0);
	posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
				 POSIX_SPAWN_SETPGROUP);
}

/* Exec a worker for SP with posix_spawn, its FDS (socket end, output
 * pipe, memory block) as fds 3, 1 and 2, and 4.  0, or -1 with errno. */
static int
exec_worker(struct sup_pool *sp, char *const envp[], const int fds[3], pid_t *pid,
	    int *pidfd)
{
	const char *path = sup_worker_path();
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	char *argv[2];
	int rc;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
	posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
	posix_spawn_file_actions_adddup2(&fa, fds[0], 3);
	posix_spawn_file_actions_adddup2(&fa, fds[2], 4);
	sup_spawnattr_init(&attr);
	argv[0] = xasprintf("jobrund-worker: %s", sp->def->name);
	argv[1] = NULL;
	rc = posix_spawn(pid, path, &fa, &attr, argv, envp);
	free(argv[0]);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0) {
		errno = rc;
		log_warn("job %s: cannot start worker %s", sp->def->name, path);
		return -1;
	}
	*pidfd = pidfd_open(*pid, 0);
	if (*pidfd == -1) {
		/* Only on kernels before 5.3: refuse rather than supervise by
		 * pid, which could hit a recycled process. */
		log_warn("job %s: pidfd_open(%d)", sp->def->name, (int)*pid);
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
		return -1;
	}
	fcntl(*pidfd, F_SETFD, FD_CLOEXEC);
	return 0;
}

/* The worker's ends, as exec_worker and the factory take them. */
static void
spawn_fds(const struct spawn *s, int fds[3])
{
	fds[0] = s->sv[1];
	fds[1] = s->outp[1];
	fds[2] = s->memfd;
}

/* Worker S of SP is running as PID: supervise it and greet it. */
static void
spawn_finish(struct sup_pool *sp, struct spawn *s, pid_t pid, int pidfd, bool forked)
{
	struct msg_hello hello;
	struct worker *w;

	/* Its ends are the worker's now. */
	close(s->sv[1]);
	close(s->outp[1]);
	close(s->memfd);
	strv_free(s->envp);
	set_nonblock(s->sv[0]);
	set_nonblock(s->outp[0]);

	w = xcalloc(1, sizeof *w);
	w->pool = sp;
	w->pid = pid;
	w->pidfd = pidfd;
	w->sock = s->sv[0];
	w->outfd = s->outp[0];
	w->state = W_STARTING;
	w->seq = s->seq;
	w->shm = s->shm;
	w->spawned = mono_now();
	w->timer = loop_timer_new(timer_fired, w);
	pconn_init(&w->conn, w->sock);
	w->sock_w = loop_add(w->sock, EPOLLIN, on_socket, w);
	w->out_w = loop_add(w->outfd, EPOLLIN, on_output, w);
	w->pid_w = loop_add(w->pidfd, EPOLLIN, on_exit_event, w);
	w->next = sp->workers;
	sp->workers = w;
	sp->nworkers++;
	live_workers++;
	w->all_next = all_workers;
	if (all_workers)
		all_workers->all_prev = w;
	all_workers = w;

	memset(&hello, 0, sizeof hello);
	hello.version = PROTO_VERSION;
	hello.job = sp->def->name;
	hello.plugin_dir = sp->cfg->plugin_dir;
	hello.plugin = sp->def->plugin_name;
	hello.settings = sp->def->settings_text;
	hello.config_file = sp->def->file;
	hello.log_level = log_get_level();
	for (int i = 0; i < JR_RLIMITS; i++)
		hello.rlimit[i] = sp->def->rlimit[i];
	hello.user = sp->def->user;
	hello.uid = (uint32_t)sp->def->uid;
	hello.gid = (uint32_t)sp->def->gid;
	hello.set_gid = sp->def->user != NULL || sp->def->group != NULL;
	hello.cwd = sp->def->cwd;
	proto_put_hello(&w->conn.out, &hello);
	worker_flush(w);
	/* A plugin whose init hangs must not hold the job's tasks for ever. */
	arm_deadline(w, STARTUP_TIMEOUT);
	log_debug("job %s: started worker %d (%s)", sp->def->name, (int)pid,
		  forked ? "forked by the worker factory" : "exec'd");
}

/* Exec worker S of SP (posix_spawn): 0, or -1 with errno (S discarded). */
static int
spawn_execd(struct sup_pool *sp, struct spawn *s)
{
	int fds[3], pidfd;
	pid_t pid;

	spawn_fds(s, fds);
	if (exec_worker(sp, s->envp, fds, &pid, &pidfd) == -1) {
		spawn_discard(s);
		return -1;
	}
	spawn_finish(sp, s, pid, pidfd, false);
	return 0;
}

/* Start up to N workers for SP, forked by the worker factory (factory.c)
 * when it can, else exec'd: how many started; *ERR the errno of the
 * first that could not (0: none failed; more may be started then).
 *
 * All are asked of the factory before the first answer is read: it forks
 * one while the daemon prepares the next and greets the one before, so a
 * cold pool's workers start together rather than one after the other.
 * One descriptor is kept spare while they are prepared: the first answer
 * needs one for its pidfd, and each worker started frees more. */
static int
spawn_workers(struct sup_pool *sp, int n, int *err)
{
	struct spawn s[FACTORY_PIPELINE];
	int asked = 0, started = 0, spare;

	*err = 0;
	if (n > FACTORY_PIPELINE)
		n = FACTORY_PIPELINE;
	spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (spare == -1 && (errno == EMFILE || errno == ENFILE)) {
		*err = errno;
		return 0;
	}
	while (asked < n) {
		int fds[3], rc;

		if (spawn_prepare(sp, &s[asked]) == -1) {
			/* Short of descriptors with some in hand: those
			 * first; the caller's next round tries again. */
			if (asked == 0 && started == 0)
				*err = errno;
			break;
		}
		spawn_fds(&s[asked], fds);
		rc = factory_ask(s[asked].seq, sp->def->name, s[asked].envp, fds);
		if (rc == FACTORY_BUSY) {
			spawn_discard(&s[asked]);
			break;
		}
		if (rc == 0) {
			asked++;
			continue;
		}
		/* The factory cannot fork this one: exec it now, its
		 * pidfd taking the spare's place. */
		if (spare != -1) {
			close(spare);
			spare = -1;
		}
		if (spawn_execd(sp, &s[asked]) == 0) {
			started++;
			n--;
		} else {
			*err = errno;
			break;
		}
	}
	if (spare != -1)
		close(spare);
	for (int i = 0; i < asked; i++) {
		struct spawn *one = &s[i];
		int rc, pidfd;
		pid_t pid;

		rc = factory_answer(one->seq, &pid, &pidfd);
		if (rc == 0) {
			spawn_finish(sp, one, pid, pidfd, true);
			started++;
			continue;
		}
		if (rc == FACTORY_LOST) {
			/* What it may have forked holds these: exec the
			 * worker with new ones. */
			spawn_discard(one);
			if (spawn_prepare(sp, one) == 0 && spawn_execd(sp, one) == 0) {
				started++;
				continue;
			}
		} else {
			spawn_discard(one);
		}
		if (*err == 0)
			*err = errno;
	}
	return started;
}

/* Is SP to be kept at its full size, work or not? */
static bool
keep_full(const struct sup_pool *sp)
{
	return sp->prestart && !sp->prestart_held;
}

/* Keeping SP full would only fail again and again (WHY): stop until a
 * run gets a worker started (READY).  That run starts afresh, without
 * the delay that the failures here have built up. */
static void
hold_prestart(struct sup_pool *sp, const char *why)
{
	if (!keep_full(sp))
		return;
	sp->prestart_held = true;
	sp->failures = 0;
	sp->next_spawn = 0;
	/* Said once, not at every run that resumes it and fails again. */
	log_msg(sp->held_said ? LOG_DEBUG : LOG_WARNING, "job %s: prestart "
		"suspended until a run starts a worker: %s", sp->def->name, why);
	sp->held_said = true;
}

/* How many more idle workers, up to N, has the daemon descriptors to
 * spare for, keeping PRESTART_FD_RESERVE for its work (clients, timers,
 * runs)?  While a batch starts, its workers hold 2 more each and the
 * batch a spare (spawn_workers): 33 at most, out of the reserve. */
static int
fds_to_spare(int n)
{
	struct rlimit rl;
	rlim_t open = 0, fit;
	DIR *dir;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return 0;
	if (rl.rlim_cur == RLIM_INFINITY)
		return n;
	if ((dir = opendir("/proc/self/fd")) == NULL)
		return 0;
	while (readdir(dir) != NULL)
		open++;                 /* ".", ".." and DIR's own: a margin */
	closedir(dir);
	if (open + PRESTART_FD_RESERVE >= rl.rlim_cur)
		return 0;
	fit = (rl.rlim_cur - open - PRESTART_FD_RESERVE) / DAEMON_FDS_PER_WORKER;
	return fit < (rlim_t)n ? (int)fit : n;
}

static void
spawn_timer_fired(void *arg)
{
	struct sup_pool *sp = arg;

	loop_timer_remove(sp->spawn_timer);
	sp->spawn_timer = NULL;
	dispatch(sp);
}

static void
fail_queue(struct sup_pool *sp, const char *why)
{
	struct task *t;

	while ((t = queue_pop(sp)) != NULL)
		finish_unstarted(t, TASK_FAILED, why);
}

/* --- dispatching ------------------------------------------------------ */

/* Can W be given tasks? */
static bool
eligible(const struct worker *w)
{
	return w->state == W_READY && !w->stopping && !w->gone && w->sock != -1 &&
	       !w->stop_set && w->escalation == 0 && !w->corrupt;
}

/* Has W been running one task for long (for this pool)?  Those behind
 * it, and new ones, are better off elsewhere. */
static bool
stalled(struct worker *w, double now)
{
	double start, limit = STALL_FACTOR * w->pool->task_s;
	uint64_t id;
	int rc;

	if (w->rlen == 0)
		return false;
	rc = page_running(w, &id, &start);
	if (rc == RUN_BAD)
		return true;    /* being killed */
	if (!(limit >= STALL_MIN))
		limit = STALL_MIN;
	return rc == RUN_TASK && now - start > limit;
}

/* Tasks W may still be given under max_tasks_per_worker. */
static size_t
tasks_left(const struct worker *w)
{
	int max = w->pool->def->max_tasks_per_worker;

	if (max <= 0)
		return SIZE_MAX;
	return w->granted < max ? (size_t)(max - w->granted) : 0;
}

/* Hand out the queue: a batch at a time to each worker that can take
 * one (idle ones first), none beyond two batches or its share of what
 * is queued. */
static void
hand_out(struct sup_pool *sp, double now)
{
	size_t batch = (size_t)sp->batch;
	/* Two batches: one to run, one to start on when it is done, without
	 * a round trip to us.  Tasks too long to batch go one at a time, two
	 * held: the second is taken back (steal) for a worker that goes idle
	 * first, and a worker long in one task (stalled) is given none. */
	size_t hold = 2 * batch;
	bool gave = true;

	while (gave && sp->nqueued > 0) {
		size_t nready = 0;

		gave = false;
		for (struct worker *w = sp->workers; w; w = w->next)
			nready += eligible(w) && !stalled(w, now);
		if (nready == 0)
			return;
		for (int idle_pass = 1; idle_pass >= 0; idle_pass--) {
			for (struct worker *w = sp->workers; w && sp->nqueued > 0; w = w->next) {
				size_t share, n;

				if ((w->rlen == 0) != (idle_pass == 1) || !eligible(w) ||
				    stalled(w, now))
					continue;
				share = (sp->nqueued + 2 * nready - 1) / (2 * nready);
				n = batch < share ? batch : share;
				/* max_rss is looked at after each task: one at a
				 * time, as before batches. */
				if (sp->def->max_rss > 0)
					n = w->rlen == 0 ? 1 : 0;
				if (n > tasks_left(w))
					n = tasks_left(w);
				if (n == 0 || (w->rlen > 0 && w->rlen + n > hold))
					continue;
				size_t before = w->rlen;
				send_batch(w, (uint32_t)n);
				gave |= w->rlen > before;
			}
		}
	}
}

/* The queue is empty and a worker idle: take back unstarted tasks from
 * the others and hand them out again. */
static void
steal(struct sup_pool *sp, double now)
{
	bool idle = false;
	size_t n = 0;

	if (sp->nqueued > 0)
		return;
	for (struct worker *w = sp->workers; w; w = w->next)
		idle |= eligible(w) && w->rlen == 0 && tasks_left(w) > 0;
	if (!idle)
		return;
	for (struct worker *v = sp->workers; v; v = v->next) {
		uint64_t word, next, unstarted;

		if (v->rlen == 0 || v->gone || v->state != W_READY ||
		    page_claim(v, &word, &next) == -1)
			continue;
		unstarted = v->claim_limit - next;
		if (unstarted == 0)
			continue;
		/* A worker busy for long keeps none; any other, the smaller
		 * half (an idle worker runs a lone one now, not after). */
		if (stalled(v, now))
			n += take_back(v, 0);
		else
			n += take_back(v, next + unstarted / 2);
	}
	if (n > 0)
		hand_out(sp, now);
}

/* Start workers up to the pool size: one per queued task beyond those
 * starting, or, while the pool is kept full (prestart), all of them. */
static void
spawn_more(struct sup_pool *sp)
{
	while (sp->nqueued > 0 || keep_full(sp)) {
		/* Retiring workers (stopping) no longer count: their
		 * replacements may start while they exit. */
		int starting = 0, serving = 0, want, started, err;
		for (struct worker *w = sp->workers; w; w = w->next) {
			starting += w->state == W_STARTING && !w->stopping;
			serving += !w->stopping;
		}
		if (sp->stopping)
			return;
		if (serving >= sp->def->workers) {
			if (keep_full(sp))
				sp->held_said = false;
			return;
		}
		if ((size_t)starting >= sp->nqueued && !keep_full(sp))
			return;
		double now = mono_now();
		if (now < sp->next_spawn) {
			if (sp->spawn_timer == NULL)
				sp->spawn_timer = loop_timer_add(sp->next_spawn - now, 0,
								 spawn_timer_fired, sp);
			return;
		}
		want = sp->def->workers - serving;
		if (sp->nqueued == 0) {
			/* Only prestart wants these: not at the cost of the
			 * descriptors the daemon needs for its work. */
			if ((want = fds_to_spare(want)) == 0) {
				hold_prestart(sp, "too few descriptors left "
					      "(RLIMIT_NOFILE) for another idle worker");
				return;
			}
		} else if (!keep_full(sp) && sp->nqueued - (size_t)starting < (size_t)want) {
			want = (int)(sp->nqueued - (size_t)starting);
		}
		started = spawn_workers(sp, want, &err);
		serving += started;
		if (err != 0) {
			bool shortage = err == EMFILE || err == ENFILE ||
					err == EAGAIN || err == ENOMEM;

			if (shortage && serving > 0 && sp->nqueued > 0) {
				/* Out of descriptors or processes for now: the
				 * workers there are serve the queue, and the next
				 * dispatch (as one finishes a task) tries again. */
				if (!sp->shortage_logged)
					log_msg(LOG_WARNING, "job %s: cannot start more "
						"workers (%s): running on %d", sp->def->name,
						strerror(err), serving);
				sp->shortage_logged = true;
				return;
			}
			/* With nothing queued, only prestart wanted it. */
			char *why = xasprintf("cannot start a worker (%s): %s",
					      sup_worker_path(), strerror(err));
			fail_queue(sp, why);
			hold_prestart(sp, why);
			free(why);
			return;
		}
		if (started == 0)
			return;         /* none started, none failed: later */
		sp->shortage_logged = false;
	}
}

/* Hand queued tasks to workers; balance; start workers up to the pool
 * size. */
static void
dispatch(struct sup_pool *sp)
{
	double now;

	if (sp->dispatching || sp->stopping)
		return;
	sp->dispatching = true;
	now = mono_now();
	hand_out(sp, now);
	steal(sp, now);
	spawn_more(sp);
	sp->dispatching = false;
}

/* --- ending ----------------------------------------------------------- */

static bool
is_admin_signal(int sig)
{
	/* Signals people send to stop a process; the others come from a
	 * fault in the process itself (SEGV, BUS, ABRT, FPE, ILL, ...). */
	switch (sig) {
	case SIGKILL: case SIGTERM: case SIGINT: case SIGHUP: case SIGQUIT:
	case SIGUSR1: case SIGUSR2: case SIGALRM:
		return true;
	}
	return false;
}

static char *
describe_exit(const siginfo_t *si)
{
	if (si->si_code == CLD_EXITED)
		return xasprintf("exited with status %d", si->si_status);
	if (si->si_code != CLD_KILLED && si->si_code != CLD_DUMPED)
		return xstrdup("ended (its exit status was lost)");
	return xasprintf("killed by SIG%s%s",
			 sigabbrev_np(si->si_status) ? sigabbrev_np(si->si_status) : "?",
			 si->si_code == CLD_DUMPED ? " (core dumped)" : "");
}

static void
pool_free_now(void *arg)
{
	struct sup_pool *sp = arg;

	loop_timer_remove(sp->free_timer);
	loop_timer_remove(sp->grace_timer);
	loop_timer_remove(sp->spawn_timer);
	loop_timer_remove(sp->kick_timer);
	free(sp);
	pools_stopping--;
}

/* Free a stopped pool once its last worker is reaped.  Never at once:
 * this is reached from deep inside callbacks that still hold SP. */
static void
pool_maybe_free(struct sup_pool *sp)
{
	if (!sp->stopping || sp->workers != NULL || sp->free_timer != NULL)
		return;
	sp->free_timer = loop_timer_add(0, 0, pool_free_now, sp);
}

/* How the task a dead worker was running ended. */
static void
end_running_task(struct worker *w, struct task *t, const siginfo_t *si,
		 const char *how, double start)
{
	struct sup_pool *sp = w->pool;
	struct task_result *r = &t->result;
	bool by_signal = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;
	uint64_t id = 0;
	double now = mono_now();

	for (size_t i = 0; i < w->rlen; i++)
		if (ring_at(w, i)->task == t)
			id = ring_at(w, i)->id;
	r->pid = w->pid;
	r->signal = by_signal ? si->si_status : 0;
	r->exit_code = si->si_code == CLD_EXITED ? si->si_status : -1;
	r->core_dumped = si->si_code == CLD_DUMPED;
	/* Dated from its start as the worker recorded it, else from now. */
	clock_gettime(CLOCK_REALTIME, &r->started);
	if (start > 0 && start <= now) {
		double back = now - start;
		double rt = ts_to_s(&r->started) - back;

		r->started.tv_sec = (time_t)rt;
		r->started.tv_nsec = (long)((rt - (double)r->started.tv_sec) * 1e9);
		r->wall_s = back;
	} else {
		r->wall_s = 0;
	}
	free(r->error);
	if (w->stop_set && w->stop_id == id && w->timed_out) {
		r->status = TASK_TIMEOUT;
		r->error = xasprintf("timed out after %gs; worker %s",
				     sp->def->timeout_s, how);
	} else if (w->corrupt) {
		r->status = TASK_CRASHED;
		r->error = xasprintf("worker's shared state with jobrund was corrupt, "
				     "and jobrund killed it; worker %s", how);
	} else if (w->lost_socket) {
		r->status = TASK_CRASHED;
		r->error = xasprintf("worker closed its connection to jobrund "
				     "during the task and was killed; worker %s", how);
	} else if ((w->stop_set && w->stop_id == id && w->cancelled) || w->stopping) {
		r->status = TASK_CANCELLED;
		r->error = xasprintf("cancelled; worker %s", how);
	} else if (by_signal && is_admin_signal(si->si_status)) {
		r->status = TASK_KILLED;
		r->error = xasprintf("worker %s", how);
	} else {
		r->status = TASK_CRASHED;
		r->error = xasprintf("worker %s", how);
	}
	give_output(w, t);
	log_msg(LOG_NOTICE, "job %s: worker %d %s during task %zu",
		sp->def->name, (int)w->pid, how, t->result.index);
}

static void
worker_gone(struct worker *w, const siginfo_t *si)
{
	struct sup_pool *sp = w->pool;
	struct worker **pp;
	struct task *ran = NULL, *lost = NULL, **lost_tail = &lost;
	char *how = describe_exit(si);
	uint64_t word, next = 0, run_id = 0, ran_id = 0;
	double run_start = 0;
	bool claim_ok, requeued = false;
	size_t nrequeued = 0;

	/* Whatever it said before dying is still in the socket, its spool
	 * and its pipe.  Marked gone first: a result read now may start
	 * more work, which must not be handed to this worker. */
	w->gone = true;
	if (w->sock != -1)
		read_socket(w);
	read_spool(w);
	if (w->outfd != -1) {
		read_output(w, true);
		/* A child of the worker may still hold the pipe open: it
		 * is not ours to read any more. */
		if (w->outfd != -1)
			close_output(w);
	}
	end_output_line(w);
	close_socket(w);
	loop_remove(w->pid_w);
	close(w->pidfd);
	loop_timer_remove(w->timer);
	loop_timer_remove(w->escalate_timer);
	loop_timer_remove(w->lost_timer);
	for (pp = &sp->workers; *pp != w; pp = &(*pp)->next)
		;
	*pp = w->next;
	sp->nworkers--;
	live_workers--;
	if (w->all_prev)
		w->all_prev->all_next = w->all_next;
	else
		all_workers = w->all_next;
	if (w->all_next)
		w->all_next->all_prev = w->all_prev;

	/* Its tasks not reported: the one it ran ends by how the worker
	 * did; those it had not started go back to the queue; any other
	 * started one lost its result with it.  The one it ran is the one
	 * its block says, else the last it claimed (last_started: not
	 * always next - 1). */
	if (page_running(w, &run_id, &run_start) != RUN_TASK || ring_find(w, run_id) == NULL)
		run_start = 0;
	claim_ok = page_claim(w, &word, &next) == 0;
	if (w->rlen > 0 && claim_ok) {
		ssize_t i = last_started(w, next);

		if (run_start > 0) {
			ran = ring_find(w, run_id);
			ran_id = run_id;
		} else if (i >= 0) {
			ran = ring_at(w, (size_t)i)->task;
			ran_id = ring_at(w, (size_t)i)->id;
		}
	} else if (w->rlen > 0 && !claim_ok) {
		ran = ring_at(w, 0)->task;      /* which ran cannot be told */
		ran_id = ring_at(w, 0)->id;
	}
	if (ran)
		end_running_task(w, ran, si, how, run_start > 0 && run_id == ran_id ?
				 run_start : 0);
	else if (w->state == W_STARTING && !w->stopping && !sp->stopping)
		log_msg(LOG_ERR, "job %s: worker %d %s before it was ready%s%s",
			sp->def->name, (int)w->pid, how, w->fail_msg ? ": " : "",
			w->fail_msg ? w->fail_msg : "");
	else if (!w->stopping && !sp->stopping)
		log_msg(LOG_NOTICE, "job %s: idle worker %d %s%s", sp->def->name,
			(int)w->pid, how, keep_full(sp) ? ": replacing it (prestart)" : "");
	else
		log_debug("job %s: worker %d %s", sp->def->name, (int)w->pid, how);
	while (w->rlen > 0) {
		struct slot s = ring_pop_back(w);

		s.task->exec_priv = NULL;
		if (s.task == ran)
			continue;
		if (claim_ok && s.id >= next) {
			queue_push_front(sp, s.task);
			requeued = true;
			nrequeued++;
			continue;
		}
		struct task_result *r = &s.task->result;
		r->status = TASK_CRASHED;
		r->pid = w->pid;
		r->signal = 0;
		r->exit_code = -1;
		free(r->error);
		r->error = xasprintf("worker %s before it reported this task (its result "
				     "was lost)", how);
		clock_gettime(CLOCK_REALTIME, &r->started);
		s.task->next = NULL;
		*lost_tail = s.task;
		lost_tail = &s.task->next;
	}

	/* An unplanned death delays the next spawn, doubling each time: a
	 * kept-full pool's idle one too, lest a worker that dies idle (a
	 * plugin thread's crash) be replaced in a tight loop.  Not so a
	 * worker without a task that someone killed (kill, jobrunctl kill)
	 * once it had lived a while: their doing, not a loop, and not the
	 * plugin's failure to start either. */
	bool killed = (si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED) &&
		      is_admin_signal(si->si_status) && !w->init_hung;
	bool settled_kill = killed && !ran && mono_now() - w->spawned >= SETTLED_S;

	if (!w->stopping && !sp->stopping && !settled_kill &&
	    (ran || w->state == W_STARTING || keep_full(sp))) {
		double delay = RESPAWN_DELAY_MIN;
		for (int i = 0; i < sp->failures && delay < RESPAWN_DELAY_MAX; i++)
			delay *= 2;
		if (delay > RESPAWN_DELAY_MAX)
			delay = RESPAWN_DELAY_MAX;
		sp->failures++;
		sp->next_spawn = mono_now() + delay;
	}
	if (w->state == W_STARTING && !w->stopping && !sp->stopping && !killed) {
		sp->startup_failures++;
		if (w->fail_msg || sp->startup_failures >= STARTUP_FAILURES_MAX) {
			/* A worker that cannot load its plugin will not do
			 * better next time: fail the waiting tasks. */
			char *why = xasprintf("worker could not start: %s",
					      w->fail_msg ? w->fail_msg : how);
			fail_queue(sp, why);
			sp->startup_failures = 0;
			hold_prestart(sp, why);
			free(why);
		}
	} else if (w->state == W_READY && !ran && !w->stopping && !sp->stopping &&
		   !killed && keep_full(sp) &&
		   ++sp->idle_deaths >= STARTUP_FAILURES_MAX) {
		/* Workers that start, then die with nothing to do: each
		 * replacement would only do the same. */
		char *why = xasprintf("%d workers in a row %s idle",
				      sp->idle_deaths, how);
		sp->idle_deaths = 0;
		hold_prestart(sp, why);
		free(why);
	}
	if (requeued && sp->stopping)
		fail_queue(sp, "jobrund is stopping");
	else if (requeued)
		log_info("job %s: worker %d: %zu task%s it had not started go back to "
			 "the queue", sp->def->name, (int)w->pid, nrequeued,
			 nrequeued == 1 ? "" : "s");
	pconn_free(&w->conn);
	if (w->shm)
		munmap(w->shm, PROTO_SHM_SIZE);
	free(w->ring);
	free(w->pend);
	free(w->fail_msg);
	free(how);
	free(w);
	/* What the worker's tasks left behind outside its group now belongs
	 * to nobody: find it. */
	reaper_scan();

	if (sp->stopping)
		pool_maybe_free(sp);    /* no task runs in a stopping pool */
	else
		dispatch(sp);
	/* Last: recording a result may end the run and retire the job. */
	if (ran)
		run_task_done(ran);
	while (lost) {
		struct task *t = lost;

		lost = t->next;
		t->next = NULL;
		run_task_done(t);
	}
}

void
sup_prestart(struct sup_pool *sp)
{
	if (sp->prestart_held)
		log_msg(LOG_NOTICE, "job %s: prestarting its workers again",
			sp->def->name);
	sp->prestart = true;
	sp->prestart_held = false;
	sp->held_said = false;
	dispatch(sp);
}

/* Every so often while a run submits (SUBMIT_POLL tasks): look at the
 * workers (READY, results) and hand out what is queued, so that they
 * work while the rest is queued; the first time, start them. */
static void
submit_poll(struct sup_pool *sp)
{
	for (struct worker *w = sp->workers; w; w = w->next)
		if (w->sock != -1 && !w->gone)
			read_socket(w);
	dispatch(sp);
}

void
sup_submit(struct sup_pool *sp, struct task *t)
{
	if (sp->stopping) {
		finish_unstarted(t, TASK_CANCELLED, "jobrund is stopping");
		return;
	}
	queue_push(sp, t);
	if (sp->submitted++ % SUBMIT_POLL == 0)
		submit_poll(sp);
	kick(sp);
}

void
sup_submit_many(struct sup_pool *sp, struct task *tasks, size_t n)
{
	/* Queued a slice at a time, so that the first dispatch sees as many
	 * tasks as there are workers to start, and starts them together. */
	for (size_t from = 0; from < n; ) {
		size_t to = n - from > SUBMIT_POLL ? from + SUBMIT_POLL : n;

		if (sp->stopping) {
			/* The last may end the run: nothing after it. */
			for (size_t i = from; i < n; i++)
				finish_unstarted(&tasks[i], TASK_CANCELLED,
						 "jobrund is stopping");
			return;
		}
		for (size_t i = from; i < to; i++)
			queue_push(sp, &tasks[i]);
		sp->submitted += to - from;
		from = to;
		submit_poll(sp);
	}
	kick(sp);
}

/* Stop task T, which W started (it may have finished since). */
static void
stop_started(struct sup_pool *sp, struct worker *w, uint64_t id, bool now)
{
	/* Nothing else starts there meanwhile. */
	if (take_back(w, 0) > 0)
		kick(sp);
	if (now) {
		/* Shutdown: no polite request, and the config's grace.  A
		 * timeout under way for this task stays one; for another
		 * (over since) it must not become this one's status. */
		if (!w->stop_set || w->stop_id != id)
			w->timed_out = false;
		w->stop_set = true;
		w->stop_id = id;
		w->cancelled = true;
		w->hard_stop = true;
		loop_timer_remove(w->escalate_timer);
		w->escalate_timer = NULL;
		w->escalation = 1;
		escalate(w);
		return;
	}
	if (w->stop_set || w->escalation >= 1) {
		/* Already being stopped (a timeout, an earlier cancel): the
		 * escalation under way will finish the job. */
		if (!w->stop_set || w->stop_id == id)
			w->cancelled = true;
		return;
	}
	w->stop_set = true;
	w->stop_id = id;
	w->cancelled = true;
	w->escalation = 1;
	if (w->sock == -1) {
		/* Nobody to ask: go straight to the signals. */
		escalate(w);
		return;
	}
	/* Ask first: a plugin that polls task_cancelled returns cleanly and
	 * the worker lives on.  Escalate after kill_grace if it does not. */
	struct msg_cancel m = { .id = id };
	proto_put_cancel(&w->conn.out, &m);
	worker_flush(w);
	w->escalate_timer = loop_timer_add(sp->def->kill_grace_s, 0, escalate, w);
}

void
sup_cancel(struct sup_pool *sp, struct task *t, bool now)
{
	struct worker *w = t->exec_priv;
	uint64_t word, next, id = 0;
	bool held = false;

	if (queue_remove(sp, t)) {
		finish_unstarted(t, TASK_CANCELLED, "cancelled before it started");
		return;
	}
	if (w == NULL || w->gone)
		return;
	for (size_t i = 0; i < w->rlen && !held; i++) {
		if (ring_at(w, i)->task == t) {
			id = ring_at(w, i)->id;
			held = true;
		}
	}
	if (!held)
		return;
	if (page_claim(w, &word, &next) == 0 && id >= next) {
		/* Not started: take it back (and those after it, which go
		 * back to the queue) and end it here. */
		take_back(w, id);
		kick(sp);
		if (queue_remove(sp, t)) {
			finish_unstarted(t, TASK_CANCELLED, "cancelled before it started");
			return;
		}
		/* It started meanwhile: stop it. */
	}
	if (w->corrupt) {
		kill_corrupt(w);
		return;
	}
	/* Started.  Nothing else starts there now (so what follows cannot
	 * change under us); then, unless it is the last one started, it is
	 * over, and its result is on its way.  Not "id + 1 < next": a grant
	 * after a revocation skips ids. */
	if (take_back(w, 0) > 0)
		kick(sp);
	if (page_claim(w, &word, &next) == -1)
		return;         /* corrupt: being killed */
	ssize_t last = last_started(w, next);
	if (last >= 0 && ring_at(w, (size_t)last)->id > id)
		return;
	stop_started(sp, w, id, now);
}

static void
grace_expired(void *arg)
{
	struct sup_pool *sp = arg;

	loop_timer_remove(sp->grace_timer);
	sp->grace_timer = NULL;
	for (struct worker *w = sp->workers; w; w = w->next) {
		log_msg(LOG_WARNING, "job %s: worker %d still alive %.1fs after SIGTERM: "
			"sending SIGKILL", sp->def->name, (int)w->pid, sp->grace);
		signal_group(w, SIGKILL);
	}
}

void
sup_free(struct sup_pool *sp, double grace_s)
{
	sp->stopping = true;
	pools_stopping++;
	sp->grace = grace_s;
	/* What workers hold and have not started never will. */
	for (struct worker *w = sp->workers; w; w = w->next)
		if (!w->gone)
			take_back(w, 0);
	fail_queue(sp, "jobrund is stopping");
	for (struct worker *w = sp->workers; w; w = w->next) {
		/* An idle worker exits at the socket's EOF, after its plugin's
		 * fini; SIGTERM is for one that is busy or starting, and the
		 * grace timer's SIGKILL for any that hangs. */
		bool idle = w->state == W_READY && w->rlen == 0;

		w->stopping = true;
		close_socket(w);
		if (!idle)
			signal_group(w, SIGTERM);
	}
	if (sp->workers)
		sp->grace_timer = loop_timer_add(grace_s, 0, grace_expired, sp);
	pool_maybe_free(sp);
}

/* --- leftovers -------------------------------------------------------- */

/* Append PID's children (every thread's) to *LIST, recursively. */
static void
collect_descendants(pid_t pid, pid_t **list, size_t *n, size_t *cap, int depth)
{
	char path[64];
	DIR *dir;
	struct dirent *de;

	if (depth > 64)
		return;         /* a deeper tree is a fork bomb: enough */
	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	if ((dir = opendir(path)) == NULL)
		return;
	while ((de = readdir(dir)) != NULL) {
		char cpath[320], buf[4096], *save = NULL;
		FILE *fp;
		size_t len;

		if (de->d_name[0] == '.')
			continue;
		snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", (int)pid,
			 de->d_name);
		if ((fp = fopen(cpath, "re")) == NULL)
			continue;
		len = fread(buf, 1, sizeof buf - 1, fp);
		fclose(fp);
		buf[len] = '\0';
		for (char *tok = strtok_r(buf, " \n", &save); tok;
		     tok = strtok_r(NULL, " \n", &save)) {
			pid_t child = (pid_t)atoi(tok);
			if (child <= 0)
				continue;
			if (*n + 2 > *cap) {
				*cap = *cap ? *cap * 2 : 16;
				*list = xrealloc(*list, *cap * sizeof **list);
			}
			/* Pairs: the child, and the parent it was seen under. */
			(*list)[(*n)++] = child;
			(*list)[(*n)++] = pid;
			collect_descendants(child, list, n, cap, depth + 1);
		}
	}
	closedir(dir);
}

/* PID's parent from /proc, or -1. */
static pid_t
parent_of(pid_t pid)
{
	char path[64], buf[512], *p;
	FILE *fp;
	int ppid;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	if ((fp = fopen(path, "re")) == NULL)
		return -1;
	p = fgets(buf, sizeof buf, fp);
	fclose(fp);
	if (p == NULL || (p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 1, " %*c %d", &ppid) != 1)
		return -1;
	return (pid_t)ppid;
}

/* Is TAG ("<jobrund pid>.<n>") one of SP's live workers? */
static bool
tag_in_pool(const char *tag, void *arg)
{
	struct sup_pool *sp = arg;
	char *dot;
	long pid = strtol(tag, &dot, 10);

	if (pid != (long)getpid() || *dot != '.')
		return false;
	unsigned long seq = strtoul(dot + 1, NULL, 10);
	for (struct worker *w = sp->workers; w; w = w->next)
		if (w->seq == seq)
			return true;
	return false;
}

void
sup_run_ended(struct sup_pool *sp)
{
	/* What its workers' tasks set loose and we adopted. */
	reaper_kill_matching(tag_in_pool, sp, "its job's run has ended");
	for (struct worker *w = sp->workers; w; w = w->next) {
		pid_t *list = NULL;
		size_t n = 0, cap = 0;

		if (w->state != W_READY || w->rlen > 0 || w->stopping || w->gone)
			continue;
		collect_descendants(w->pid, &list, &n, &cap, 0);
		if (n == 0)
			continue;
		n /= 2;
		log_msg(LOG_NOTICE, "job %s: worker %d left %zu process%s running after "
			"the run: killing %s and replacing the worker", sp->def->name,
			(int)w->pid, n, n == 1 ? "" : "es", n == 1 ? "it" : "them");
		for (size_t i = 0; i < n; i++) {
			/* Through a pidfd, checked to be still the process the
			 * walk saw: one that exited since may have had its pid
			 * reused. */
			int fd = pidfd_open(list[2 * i], 0);
			if (fd == -1)
				continue;
			if (parent_of(list[2 * i]) == list[2 * i + 1])
				pidfd_send_signal(fd, SIGKILL, NULL, 0);
			close(fd);
		}
		free(list);
		/* Its killed children are its zombies: once it exits they
		 * are ours (we are a subreaper) and reaper.c reaps them. */
		retire_worker(w);
	}
}

/* --- for the control socket (jobrunctl workers, kill) ------------------ */

void
sup_foreach_worker(struct sup_pool *sp,
		   void (*cb)(const struct sup_worker_info *wi, void *arg), void *arg)
{
	for (struct worker *w = sp->workers; w; w = w->next) {
		struct sup_worker_info wi;

		memset(&wi, 0, sizeof wi);
		wi.pid = w->pid;
		wi.state = w->state == W_STARTING ? "starting" :
			   w->rlen > 0 ? "busy" : "idle";
		wi.stopping = w->stopping;
		if (w->rlen > 0) {
			/* The task it runs, else the next it will report. */
			const struct task *t = ring_at(w, 0)->task;
			double start;
			uint64_t id;

			/* A block that makes no sense kills the worker here
			 * too (page_running), as anywhere it is read. */
			if (page_running(w, &id, &start) == RUN_TASK && ring_find(w, id))
				t = ring_find(w, id);
			wi.busy = true;
			wi.run = t->result.run;
			wi.index = t->result.index;
		}
		wi.tasks_done = w->tasks_done;
		cb(&wi, arg);
	}
}

int
sup_kill(struct sup_pool *sp, int sig, void (*cb)(pid_t pid, void *arg), void *arg)
{
	int n = 0;

	/* A worker killed here ends as any killed from outside does: its
	 * task `killed`, and a replacement started if the run goes on. */
	for (struct worker *w = sp->workers; w; w = w->next) {
		signal_group(w, sig);
		if (cb)
			cb(w->pid, arg);
		n++;
	}
	return n;
}
