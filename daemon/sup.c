/*
 * sup.c - the process executor: supervised jobrund-worker processes.
 *
 * Each process-mode job has a pool of up to `workers` worker processes,
 * started on demand from the main thread with posix_spawn (the daemon has
 * threads, so it must exec, never plain fork), each:
 *   - in its own process group, so a kill reaches whatever it started;
 *   - with an empty signal mask and default dispositions (the daemon
 *     blocks the signals its signalfd reads, and children must not);
 *   - with only fds 0-3: /dev/null, a pipe for stdout and stderr (read
 *     here and logged with the job's name), and its socketpair end;
 *   - watched through a pidfd, so its exit is an event in the loop and
 *     no signal ever reaches a recycled pid.
 *
 * A worker's life:  STARTING --READY--> IDLE --TASK--> BUSY --RESULT--> IDLE
 * and from any state, its exit ends it.  An exit while BUSY decides the
 * task's result: `timeout` when we killed it for its deadline, `cancelled`
 * when we killed it for a cancel, `killed` when someone else sent a
 * termination signal (kill, pkill), `crashed` for a fault signal or an
 * exit.  Consecutive deaths delay the next spawn (100 ms doubling up to
 * 5 s) so a crash loop cannot spin.
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
#include <sys/pidfd.h>
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
#define SOCKET_LOST_GRACE 1.0           /* a dying worker's socket closes
					   a moment before its exit shows */

enum wstate { W_STARTING, W_IDLE, W_BUSY };

struct worker {
	struct sup_pool *pool;
	pid_t pid;
	int pidfd, sock, outfd;
	struct pconn conn;
	struct loop_watch *sock_w, *pid_w, *out_w;
	char line[OUT_LINE_MAX];
	size_t linelen;
	uint64_t line_skipped;          /* bytes of an over-long line not logged */
	enum wstate state;
	struct task *task;
	uint64_t task_id;
	struct loop_timer *deadline_timer, *escalate_timer;
	int escalation;                 /* 0 none, 1 asked, 2 SIGTERM, 3 SIGKILL */
	bool timed_out, cancelled, stopping;
	bool hard_stop;                 /* shutdown: grace is shutdown_grace */
	bool gone;                      /* reaped: being torn down */
	bool lost_socket;               /* its socket closed while it worked */
	struct loop_timer *lost_timer;  /* from that EOF to its exit */
	char *fail_msg;                 /* from a FAIL message */
	int tasks_done;
	double task_sent;               /* mono_now() when its task was sent */
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
	bool stopping;
	double grace;
	struct loop_timer *grace_timer, *spawn_timer, *free_timer;
	int failures;                   /* consecutive worker deaths */
	int startup_failures;           /* consecutive deaths before READY */
	double next_spawn;              /* mono_now() time */
	bool shortage_logged;           /* "cannot start more workers" said */
	uint64_t last_task_id;
};

static int live_workers;
static struct worker *all_workers;
static unsigned long worker_seq;
static int pools_stopping;          /* stopped, not yet freed */

static void dispatch(struct sup_pool *sp);
static void worker_gone(struct worker *w, const siginfo_t *si);

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
	return sp;
}

static void
queue_push(struct sup_pool *sp, struct task *t)
{
	t->next = NULL;
	if (sp->qtail)
		sp->qtail->next = t;
	else
		sp->qhead = t;
	sp->qtail = t;
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

/* --- sending ---------------------------------------------------------- */

static void
worker_flush(struct worker *w)
{
	int rc = pconn_flush(&w->conn);

	if (rc == -1) {
		/* The worker is going away; its exit will be reported. */
		if (errno != EPIPE && errno != ECONNRESET)
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
deadline_passed(void *arg)
{
	struct worker *w = arg;

	loop_timer_remove(w->deadline_timer);
	w->deadline_timer = NULL;
	if (w->state != W_BUSY)
		return;
	w->timed_out = true;
	log_msg(LOG_NOTICE, "job %s: task %zu timed out after %gs",
		w->pool->def->name, w->task->index, w->pool->def->timeout_s);
	if (w->escalation >= 1)
		return;         /* already being stopped: let that go on */
	/* Straight to SIGTERM: the plugin saw the same deadline through
	 * task_cancelled and had its chance to return. */
	w->escalation = 1;
	escalate(w);
}

static void
send_task(struct worker *w, struct task *t)
{
	struct sup_pool *sp = w->pool;
	struct msg_task m;

	m.id = ++sp->last_task_id;
	m.input = t->input;
	m.timeout_s = sp->def->timeout_s;
	w->task = t;
	w->task_id = m.id;
	w->state = W_BUSY;
	w->timed_out = w->cancelled = false;
	w->escalation = 0;
	t->exec_priv = w;
	t->result.pid = w->pid;
	/* What a task killed before it could report is dated from here. */
	w->task_sent = mono_now();
	clock_gettime(CLOCK_REALTIME, &t->result.started);
	proto_put_task(&w->conn.out, &m);
	worker_flush(w);
	if (sp->def->timeout_s > 0)
		w->deadline_timer = loop_timer_add(sp->def->timeout_s, 0, deadline_passed, w);
}

/* --- receiving -------------------------------------------------------- */

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

/* Keep what the worker writes during a task with the task's result, up to
 * the job's output_limit; count the rest. */
static void
keep_output(struct worker *w, const char *buf, size_t n)
{
	struct task_result *r = &w->task->result;
	size_t limit = w->pool->def->output_limit;
	size_t room = limit > r->worker_output_len ? limit - r->worker_output_len : 0;
	size_t take = n < room ? n : room;

	if (take > 0) {
		r->worker_output = xrealloc(r->worker_output, r->worker_output_len + take + 1);
		memcpy(r->worker_output + r->worker_output_len, buf, take);
		r->worker_output_len += take;
		r->worker_output[r->worker_output_len] = '\0';
	}
	if (take < n) {
		if (r->worker_output_dropped == 0)
			log_msg(LOG_NOTICE, "job %s: worker %d: task %zu wrote more than "
				"output_limit (%zu bytes): keeping the first %zu",
				w->pool->def->name, (int)w->pid, w->task->index,
				limit, limit);
		r->worker_output_dropped += n - take;
	}
}

static void
read_output(struct worker *w, bool drain)
{
	char buf[8192];
	size_t total = 0, limit = OUT_READ_MAX;
	int avail;

	/* Draining takes what is there now, not what a child still holding
	 * the pipe goes on writing: the loop must not be held here. */
	if (drain && ioctl(w->outfd, FIONREAD, &avail) == 0)
		limit = (size_t)avail;  /* 0: nothing to read, no read(2) */
	while (total < limit) {
		ssize_t n = read(w->outfd, buf, sizeof buf);
		if (n <= 0) {
			if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
				if (w->linelen)
					log_output_line(w);
				if (w->line_skipped)
					log_skipped(w);
				loop_remove(w->out_w);
				w->out_w = NULL;
				close(w->outfd);
				w->outfd = -1;
			}
			return;
		}
		total += (size_t)n;
		if (w->state == W_BUSY && w->task)
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
}

static void
on_output(int fd, uint32_t events, void *arg)
{
	(void)fd;
	(void)events;
	read_output(arg, false);
}

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

/* Retire a worker gracefully: it exits at the socket's EOF. */
static void close_socket(struct worker *w);

static void
retire_worker(struct worker *w)
{
	w->stopping = true;
	close_socket(w);
}

/* max_tasks_per_worker and max_rss, checked after each task. */
static void
check_worker_limits(struct worker *w)
{
	const struct job_def *def = w->pool->def;
	uint64_t rss;

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

static void
take_result(struct worker *w, const uint8_t *p, size_t len)
{
	struct msg_result m;
	struct task *t = w->task;

	if (proto_get_result(p, len, &m) == -1) {
		log_msg(LOG_ERR, "job %s: worker %d sent a malformed result: stopping it",
			w->pool->def->name, (int)w->pid);
		signal_group(w, SIGKILL);
		return;
	}
	/* What the task printed before returning is in the pipe already:
	 * take it now, so it is kept with this task and not the next. */
	if (w->state == W_BUSY && w->outfd != -1)
		read_output(w, true);
	/* The task is over, and so is its last unfinished line. */
	if (w->line_skipped)
		log_skipped(w);
	else if (w->linelen)
		log_output_line(w);
	if (w->state != W_BUSY || m.id != w->task_id) {
		log_msg(LOG_ERR, "job %s: worker %d sent a result for task %" PRIu64
			" it was not running: ignored", w->pool->def->name, (int)w->pid, m.id);
		proto_result_free(&m);
		return;
	}
	loop_timer_remove(w->deadline_timer);
	loop_timer_remove(w->escalate_timer);
	w->deadline_timer = w->escalate_timer = NULL;

	free(t->result.output);
	free(t->result.error);
	t->result.status = (enum task_status)m.status;
	t->result.output = xmalloc(m.output_len + 1);
	memcpy(t->result.output, m.output, m.output_len + 1);
	t->result.output_len = m.output_len;
	t->result.error = m.error ? xstrdup(m.error) : NULL;
	t->result.started.tv_sec = (time_t)m.started_sec;
	t->result.started.tv_nsec = m.started_nsec;
	t->result.wall_s = m.wall_s;
	t->result.cpu_s = m.cpu_s;
	t->result.pid = w->pid;
	proto_result_free(&m);
	if (w->timed_out && t->result.status != TASK_OK)
		t->result.status = TASK_TIMEOUT;
	else if (w->cancelled && t->result.status != TASK_OK)
		t->result.status = TASK_CANCELLED;

	w->task = NULL;
	w->state = W_IDLE;
	w->pool->failures = 0;
	w->tasks_done++;
	t->exec_priv = NULL;
	if (w->escalation >= 2)
		w->stopping = true;     /* signalled: it is going away */
	else
		check_worker_limits(w);
	run_task_done(t);
}

static void
handle_frame(struct worker *w, uint8_t type, const uint8_t *p, size_t len)
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
		w->state = W_IDLE;
		loop_timer_remove(w->deadline_timer);
		w->deadline_timer = NULL;
		sp->startup_failures = 0;
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
	case MSG_RESULT:
		take_result(w, p, len);
		return;
	}
	log_msg(LOG_ERR, "job %s: worker %d sent unknown message %u: stopping it",
		sp->def->name, (int)w->pid, type);
	signal_group(w, SIGKILL);
}

/* Read and handle what the worker sent.  Returns false at EOF. */
static bool
read_socket(struct worker *w)
{
	for (;;) {
		uint8_t type;
		const uint8_t *p;
		size_t len;
		int rc;
		ssize_t n;

		/* A frame may have retired the worker (closing the socket). */
		if (w->sock == -1)
			return false;
		n = pconn_read(&w->conn);

		if (n == 0)
			return false;
		if (n < 0) {
			if (errno == EAGAIN)
				return true;
			if (errno != ECONNRESET)
				log_warn("job %s: worker %d: read", w->pool->def->name, (int)w->pid);
			return false;
		}
		while ((rc = pconn_next(&w->conn, &type, &p, &len)) == 1)
			handle_frame(w, type, p, len);
		if (rc == -1) {
			log_msg(LOG_ERR, "job %s: worker %d: corrupt stream (%s): stopping it",
				w->pool->def->name, (int)w->pid, strerror(errno));
			signal_group(w, SIGKILL);
			return false;
		}
	}
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
	bool was_idle_before = w->state == W_IDLE;

	(void)fd;
	if (events & EPOLLOUT)
		worker_flush(w);
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		if (!read_socket(w)) {
			/* EOF: the exit itself arrives through the pidfd.  A
			 * worker that closed its socket mid-task (a plugin that
			 * closed fd 3) could never report: end it. */
			close_socket(w);
			if ((w->state == W_BUSY || w->state == W_STARTING) &&
			    !w->stopping && !w->gone && w->lost_timer == NULL)
				w->lost_timer = loop_timer_add(SOCKET_LOST_GRACE, 0,
							       socket_lost, w);
			return;
		}
	}
	/* A worker that became idle (ready, or done) takes the next task. */
	if (w->state == W_IDLE && (!was_idle_before || sp->qhead))
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

static void
startup_expired(void *arg)
{
	struct worker *w = arg;

	loop_timer_remove(w->deadline_timer);
	w->deadline_timer = NULL;
	if (w->state != W_STARTING)
		return;
	log_msg(LOG_ERR, "job %s: worker %d not ready after %gs (a plugin init that "
		"hangs?): killing it", w->pool->def->name, (int)w->pid, STARTUP_TIMEOUT);
	signal_group(w, SIGKILL);
}

/* Variables that speak to jobrund itself, never to its workers: systemd's
 * notification and watchdog sockets, socket activation, our own tags. */
static bool
daemon_only_variable(const char *var)
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
			if (!daemon_only_variable(*e))
				envp[n++] = xstrdup(*e);
	}
	envp[n++] = xasprintf("JOBRUND_JOB=%s", def->name);
	envp[n++] = xasprintf("JOBRUND_WORKER=%ld.%lu", (long)getpid(), seq);
	envp[n] = NULL;
	return envp;
}

static int
spawn_worker(struct sup_pool *sp)
{
	const char *path = sup_worker_path();
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	int sv[2] = { -1, -1 }, outp[2] = { -1, -1 };
	char *argv[2], **envp;
	unsigned long seq;
	struct worker *w;
	struct msg_hello hello;
	pid_t pid;
	int rc, pidfd;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
		goto fail;
	if (pipe2(outp, O_CLOEXEC) == -1)
		goto fail;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
	posix_spawn_file_actions_adddup2(&fa, outp[1], 2);
	posix_spawn_file_actions_adddup2(&fa, sv[1], 3);
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setpgroup(&attr, 0);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
				 POSIX_SPAWN_SETPGROUP);
	argv[0] = xasprintf("jobrund-worker: %s", sp->def->name);
	argv[1] = NULL;
	seq = ++worker_seq;
	envp = worker_environment(sp->def, seq);
	rc = posix_spawn(&pid, path, &fa, &attr, argv, envp);
	free(argv[0]);
	for (char **e = envp; *e; e++)
		free(*e);
	free(envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0) {
		errno = rc;
		log_warn("job %s: cannot start worker %s", sp->def->name, path);
		goto fail;
	}
	close(sv[1]);
	close(outp[1]);
	sv[1] = outp[1] = -1;

	pidfd = pidfd_open(pid, 0);
	if (pidfd == -1) {
		/* Only on kernels before 5.3: refuse rather than supervise by
		 * pid, which could hit a recycled process. */
		log_warn("job %s: pidfd_open(%d)", sp->def->name, (int)pid);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		goto fail;
	}
	fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	set_cloexec_nonblock(sv[0]);
	set_cloexec_nonblock(outp[0]);

	w = xcalloc(1, sizeof *w);
	w->pool = sp;
	w->pid = pid;
	w->pidfd = pidfd;
	w->sock = sv[0];
	w->outfd = outp[0];
	w->state = W_STARTING;
	w->seq = seq;
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
	hello.config_file = sp->cfg->file;
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
	w->deadline_timer = loop_timer_add(STARTUP_TIMEOUT, 0, startup_expired, w);
	log_debug("job %s: started worker %d", sp->def->name, (int)pid);
	return 0;

fail:
	for (int i = 0; i < 2; i++) {
		if (sv[i] != -1)
			close(sv[i]);
		if (outp[i] != -1)
			close(outp[i]);
	}
	return -1;
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

/* Hand queued tasks to idle workers; start workers up to the pool size. */
static void
dispatch(struct sup_pool *sp)
{
	while (sp->qhead) {
		struct worker *w, *idle = NULL;

		for (w = sp->workers; w; w = w->next)
			if (w->state == W_IDLE && !w->stopping && !w->gone &&
			    w->sock != -1)
				idle = w;
		if (idle) {
			send_task(idle, queue_pop(sp));
			continue;
		}
		/* Retiring workers (stopping) no longer count: their
		 * replacements may start while they exit. */
		int starting = 0, queued = 0, serving = 0;
		for (w = sp->workers; w; w = w->next) {
			starting += w->state == W_STARTING && !w->stopping;
			serving += !w->stopping;
		}
		if (sp->stopping || serving >= sp->def->workers)
			return;
		/* Start at most one worker per queued task beyond those
		 * already starting. */
		for (struct task *t = sp->qhead; t; t = t->next)
			queued++;
		if (starting >= queued)
			return;
		double now = mono_now();
		if (now < sp->next_spawn) {
			if (sp->spawn_timer == NULL)
				sp->spawn_timer = loop_timer_add(sp->next_spawn - now, 0,
								 spawn_timer_fired, sp);
			return;
		}
		if (spawn_worker(sp) == -1) {
			int err = errno;
			bool shortage = err == EMFILE || err == ENFILE ||
					err == EAGAIN || err == ENOMEM;

			if (shortage && serving > 0) {
				/* Out of descriptors or processes for now: the
				 * workers there are serve the queue, and the next
				 * dispatch (as one finishes a task) tries again.
				 * No timer: making one needs a descriptor too. */
				if (!sp->shortage_logged)
					log_msg(LOG_WARNING, "job %s: cannot start more "
						"workers (%s): running on %d", sp->def->name,
						strerror(err), serving);
				sp->shortage_logged = true;
				return;
			}
			char *why = xasprintf("cannot start a worker (%s): %s",
					      sup_worker_path(), strerror(err));
			fail_queue(sp, why);
			free(why);
			return;
		}
		sp->shortage_logged = false;
	}
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

static void
worker_gone(struct worker *w, const siginfo_t *si)
{
	struct sup_pool *sp = w->pool;
	struct worker **pp;
	struct task *t;
	char *how = describe_exit(si);
	bool by_signal = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;

	/* Whatever it said before dying is still in the socket and pipe.
	 * Marked gone first: a result read now may start more work, which
	 * must not be handed to this worker. */
	w->gone = true;
	if (w->sock != -1)
		read_socket(w);
	if (w->outfd != -1) {
		read_output(w, true);
		/* A child of the worker may still hold the pipe open: it
		 * is not ours to read any more. */
		if (w->line_skipped)
			log_skipped(w);
		else if (w->linelen)
			log_output_line(w);
		if (w->outfd != -1) {
			loop_remove(w->out_w);
			w->out_w = NULL;
			close(w->outfd);
			w->outfd = -1;
		}
	}
	close_socket(w);
	loop_remove(w->pid_w);
	close(w->pidfd);
	loop_timer_remove(w->deadline_timer);
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

	t = w->state == W_BUSY ? w->task : NULL;
	if (t) {
		struct task_result *r = &t->result;
		r->pid = w->pid;
		r->signal = by_signal ? si->si_status : 0;
		r->exit_code = si->si_code == CLD_EXITED ? si->si_status : -1;
		r->core_dumped = si->si_code == CLD_DUMPED;
		if (r->started.tv_sec == 0)
			clock_gettime(CLOCK_REALTIME, &r->started);
		r->wall_s = mono_now() - w->task_sent;
		free(r->error);
		if (w->timed_out) {
			r->status = TASK_TIMEOUT;
			r->error = xasprintf("timed out after %gs; worker %s",
					     sp->def->timeout_s, how);
		} else if (w->lost_socket) {
			r->status = TASK_CRASHED;
			r->error = xasprintf("worker closed its connection to jobrund "
					     "during the task and was killed; worker %s", how);
		} else if (w->cancelled || w->stopping) {
			r->status = TASK_CANCELLED;
			r->error = xasprintf("cancelled; worker %s", how);
		} else if (by_signal && is_admin_signal(si->si_status)) {
			r->status = TASK_KILLED;
			r->error = xasprintf("worker %s", how);
		} else {
			r->status = TASK_CRASHED;
			r->error = xasprintf("worker %s", how);
		}
		log_msg(LOG_NOTICE, "job %s: worker %d %s during task %zu",
			sp->def->name, (int)w->pid, how, t->index);
	} else if (w->state == W_STARTING && !w->stopping && !sp->stopping) {
		log_msg(LOG_ERR, "job %s: worker %d %s before it was ready%s%s",
			sp->def->name, (int)w->pid, how, w->fail_msg ? ": " : "",
			w->fail_msg ? w->fail_msg : "");
	} else if (!w->stopping && !sp->stopping) {
		log_msg(LOG_NOTICE, "job %s: idle worker %d %s", sp->def->name,
			(int)w->pid, how);
	} else {
		log_debug("job %s: worker %d %s", sp->def->name, (int)w->pid, how);
	}

	/* An unplanned death delays the next spawn, doubling each time. */
	if (!w->stopping && !sp->stopping && (t || w->state == W_STARTING)) {
		double delay = RESPAWN_DELAY_MIN;
		for (int i = 0; i < sp->failures && delay < RESPAWN_DELAY_MAX; i++)
			delay *= 2;
		if (delay > RESPAWN_DELAY_MAX)
			delay = RESPAWN_DELAY_MAX;
		sp->failures++;
		sp->next_spawn = mono_now() + delay;
	}
	if (w->state == W_STARTING && !sp->stopping) {
		sp->startup_failures++;
		if (w->fail_msg || sp->startup_failures >= STARTUP_FAILURES_MAX) {
			/* A worker that cannot load its plugin will not do
			 * better next time: fail the waiting tasks. */
			char *why = xasprintf("worker could not start: %s",
					      w->fail_msg ? w->fail_msg : how);
			fail_queue(sp, why);
			free(why);
			sp->startup_failures = 0;
		}
	}
	pconn_free(&w->conn);
	free(w->fail_msg);
	free(how);
	free(w);
	/* What the worker's tasks left behind outside its group now belongs
	 * to nobody: find it. */
	reaper_scan();

	if (sp->stopping) {
		pool_maybe_free(sp);    /* no task runs in a stopping pool */
	} else {
		dispatch(sp);
	}
	/* Last: recording the result may end the run and retire the job. */
	if (t) {
		t->exec_priv = NULL;
		run_task_done(t);
	}
}

void
sup_submit(struct sup_pool *sp, struct task *t)
{
	if (sp->stopping) {
		finish_unstarted(t, TASK_CANCELLED, "jobrund is stopping");
		return;
	}
	queue_push(sp, t);
	dispatch(sp);
}

void
sup_cancel(struct sup_pool *sp, struct task *t, bool now)
{
	struct worker *w = t->exec_priv;

	if (queue_remove(sp, t)) {
		finish_unstarted(t, TASK_CANCELLED, "cancelled before it started");
		return;
	}
	if (w == NULL || w->task != t)
		return;
	if (now) {
		/* Shutdown: no polite request, and the config's grace. */
		w->cancelled = true;
		w->hard_stop = true;
		loop_timer_remove(w->escalate_timer);
		w->escalate_timer = NULL;
		w->escalation = 1;
		escalate(w);
		return;
	}
	if (w->cancelled || w->escalation >= 1) {
		/* Already being stopped (a timeout, an earlier cancel): the
		 * escalation under way will finish the job. */
		w->cancelled = true;
		return;
	}
	if (w->sock == -1) {
		/* Nobody to ask: go straight to the signals. */
		w->cancelled = true;
		w->escalation = 1;
		escalate(w);
		return;
	}
	/* Ask first: a plugin that polls task_cancelled returns cleanly and
	 * the worker lives on.  Escalate after kill_grace if it does not. */
	struct msg_cancel m = { .id = w->task_id };
	w->cancelled = true;
	w->escalation = 1;
	proto_put_cancel(&w->conn.out, &m);
	worker_flush(w);
	w->escalate_timer = loop_timer_add(sp->def->kill_grace_s, 0, escalate, w);
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
	fail_queue(sp, "jobrund is stopping");
	for (struct worker *w = sp->workers; w; w = w->next) {
		/* An idle worker exits at the socket's EOF, after its plugin's
		 * fini; SIGTERM is for one that is busy or starting, and the
		 * grace timer's SIGKILL for any that hangs. */
		bool idle = w->state == W_IDLE;

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

		if (w->state != W_IDLE || w->stopping || w->gone)
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
			   w->state == W_BUSY ? "busy" : "idle";
		wi.stopping = w->stopping;
		wi.busy = w->state == W_BUSY && w->task != NULL;
		if (wi.busy) {
			wi.run = w->task->result.run;
			wi.index = w->task->index;
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
