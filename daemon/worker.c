/*
 * worker.c - jobrund-worker, the process that runs one job's tasks in
 * process mode.
 *
 * jobrund starts it with posix_spawn, its socketpair end on fd 3, the
 * memory block it shares with the daemon (struct proto_shm) on fd 4, a
 * clean signal mask and nothing else open.  The worker maps the block and
 * closes fd 4 (its plugin sees fds 0-3 only), reads HELLO, loads and
 * initialises the plugin once (with the same loader checks as the
 * daemon), answers READY, then runs tasks until the socket closes.  A
 * plugin that crashes takes only this process down; the daemon records
 * the task as crashed and starts another worker.
 *
 * Tasks come in batches (TASKS frames).  Before starting one the worker
 * claims it in the shared claim word with a compare-and-swap, so that a
 * task the daemon took back (to give to an idle worker) is never run
 * here too.  Results are encoded into the shared spool and written to the
 * socket together: when the worker has nothing more to run, when 1 ms has
 * passed since the first unsent one, or when the spool fills.  A worker
 * that dies leaves its unsent results in the spool, where the daemon
 * finds them.  A task that may have written to stdout/stderr (its watch
 * on the pipe fired, outwatch.c, or the daemon read some of the pipe
 * during the task) has its result sent at once and the worker waits for
 * the daemon's ACK, which comes once the daemon has taken that output for
 * this task: only then does it claim the next, so output is never counted
 * with the wrong task.
 *
 * The worker dies with the daemon: PR_SET_PDEATHSIG, and an EOF on the
 * socket, which it sees even while a task runs because the plugin's
 * cancellation checks look at the socket.
 */
#include "config.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

#define WORKER_FD 3
#define SHM_FD 4
#define SEND_AFTER 0.001                /* s: unsent results wait no longer */
#define SEND_BYTES (64 * 1024)          /* ...and fill no more of the spool */

static struct pconn conn;
static struct pbuf sendbuf;
/* Guards sendbuf and writes to the socket: a plugin may log from
 * threads of its own. */
static pthread_mutex_t send_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *job_name = "?";
static struct proto_shm *shm;
static uint8_t *spool;
static size_t spool_used;               /* = shm->spool_len */
static double spool_since;              /* mono_now() of the oldest unsent */

/* The batches received and not yet run, oldest first. */
struct batch {
	struct msg_tasks m;
	uint32_t next;                  /* index of the first not run */
	struct batch *link;
};
static struct batch *bhead, *btail;
static uint64_t claim_ref;              /* no claim word value is below it */

/* The current task, for cancellation checks. */
static uint64_t current_id;
static bool current_running;
static bool current_cancelled;
static bool daemon_gone;

static void JR_NORETURN
worker_exit(int status)
{
	/* _exit: a plugin's atexit handlers or static destructors must not
	 * run twice or touch the daemon's state. */
	_exit(status);
}

/* Write LEN bytes, blocking: the daemon always reads.  Caller holds
 * send_lock. */
static void
write_all(const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(WORKER_FD, p, len);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EPIPE || errno == ECONNRESET)
				worker_exit(0);
			syslog(LOG_ERR, "jobrund-worker: job %s: write to daemon: %m",
			       job_name);
			worker_exit(1);
		}
		p += n;
		len -= (size_t)n;
	}
}

/* Send the frames queued in sendbuf.  Caller holds send_lock. */
static void
send_frames(void)
{
	write_all(sendbuf.data, sendbuf.len);
	sendbuf.len = 0;
}

/* Send the results in the spool. */
static void
send_results(void)
{
	if (spool_used == 0)
		return;
	pthread_mutex_lock(&send_lock);
	write_all(spool, spool_used);
	pthread_mutex_unlock(&send_lock);
	spool_used = 0;
	atomic_store_explicit(&shm->spool_len, 0, memory_order_release);
}

static void JR_NORETURN
fail(const char *fmt, ...)
{
	struct msg_fail m;
	va_list ap;
	char msg[2048];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	m.message = msg;
	proto_put_fail(&sendbuf, &m);
	send_frames();
	worker_exit(1);
}

static void
log_to_daemon(int priority, const char *job, const char *text)
{
	struct msg_log m = { .priority = priority, .text = text };

	(void)job;
	pthread_mutex_lock(&send_lock);
	proto_put_log(&sendbuf, &m);
	send_frames();
	pthread_mutex_unlock(&send_lock);
}

static void
add_batch(const uint8_t *p, size_t len)
{
	struct batch *b = xmalloc(sizeof *b);

	if (proto_get_tasks(p, len, &b->m) == -1) {
		syslog(LOG_ERR, "jobrund-worker: job %s: malformed TASKS from daemon",
		       job_name);
		worker_exit(1);
	}
	b->next = 0;
	b->link = NULL;
	if (btail)
		btail->link = b;
	else
		bhead = b;
	btail = b;
}

static void
drop_batch(void)
{
	struct batch *b = bhead;

	bhead = b->link;
	if (bhead == NULL)
		btail = NULL;
	proto_tasks_free(&b->m);
	free(b);
}

/* Handle one frame that arrived while a task runs, between tasks or
 * while waiting for an ACK; true when it is the ACK of task ACK_ID. */
static bool
handle_frame(uint8_t type, const uint8_t *p, size_t len, uint64_t ack_id)
{
	struct msg_cancel c;
	struct msg_ack a;

	switch (type) {
	case MSG_TASKS:
		add_batch(p, len);
		return false;
	case MSG_CANCEL:
		if (proto_get_cancel(p, len, &c) == -1)
			break;
		/* For a task already over, it came too late: ignored. */
		if (current_running && c.id == current_id)
			current_cancelled = true;
		return false;
	case MSG_ACK:
		if (proto_get_ack(p, len, &a) == -1)
			break;
		return a.id == ack_id;
	}
	syslog(LOG_ERR, "jobrund-worker: job %s: unexpected message %u from daemon",
	       job_name, type);
	worker_exit(1);
}

/* Handle the frames already read. */
static bool
handle_frames(uint64_t ack_id)
{
	uint8_t type;
	const uint8_t *p;
	size_t len;
	bool acked = false;
	int rc;

	while ((rc = pconn_next(&conn, &type, &p, &len)) == 1)
		acked |= handle_frame(type, p, len, ack_id);
	if (rc == -1) {
		syslog(LOG_ERR, "jobrund-worker: job %s: bad frame from daemon: %m",
		       job_name);
		worker_exit(1);
	}
	return acked;
}

/* The task's cancel hook: look at the socket without blocking. */
static int
worker_cancel_check(struct jr_task *t)
{
	struct pollfd pfd = { .fd = WORKER_FD, .events = POLLIN };

	(void)t;
	if (current_cancelled || daemon_gone)
		return 1;
	/* A CANCEL may have come in the same read as its TASKS. */
	handle_frames(UINT64_MAX);
	while (!current_cancelled && poll(&pfd, 1, 0) == 1) {
		ssize_t n = pconn_read(&conn);
		if (n <= 0) {
			daemon_gone = true;
			return 1;
		}
		handle_frames(UINT64_MAX);
	}
	return current_cancelled || daemon_gone;
}

/* Block until more frames arrive and handle them; false at EOF.  True
 * in *ACKED when one was the ACK of ACK_ID. */
static bool
read_frames(uint64_t ack_id, bool *acked)
{
	ssize_t n = pconn_read(&conn);

	if (n == 0 || (n < 0 && errno == ECONNRESET))
		return false;
	if (n < 0) {
		syslog(LOG_ERR, "jobrund-worker: job %s: read: %m", job_name);
		worker_exit(1);
	}
	*acked = handle_frames(ack_id);
	return true;
}

/* Block until a frame arrives (before the tasks start); returns 0 at
 * EOF. */
static int
wait_frame(uint8_t *type, const uint8_t **p, size_t *len)
{
	for (;;) {
		int rc = pconn_next(&conn, type, p, len);
		if (rc == 1)
			return 1;
		if (rc == -1) {
			syslog(LOG_ERR, "jobrund-worker: job %s: bad frame from daemon: %m",
			       job_name);
			worker_exit(1);
		}
		ssize_t n = pconn_read(&conn);
		if (n == 0)
			return 0;
		if (n < 0) {
			if (errno == ECONNRESET)
				return 0;
			syslog(LOG_ERR, "jobrund-worker: job %s: read: %m", job_name);
			worker_exit(1);
		}
	}
}

/*
 * Claim the next task: drop what the daemon took back (ids below the
 * claim word's NEXT, or not below its LIMIT: the daemon grants before it
 * sends, so a task held here above the limit was revoked), then move NEXT
 * past the first one held.  The task's id and input, or false when none
 * can be claimed now (none held, or its batch has not arrived).
 */
static bool
claim_task(uint64_t *id, const char **input, double *timeout_s)
{
	for (;;) {
		uint64_t word = atomic_load_explicit(&shm->claim, memory_order_acquire);
		uint64_t next = proto_claim_next(word, claim_ref);
		uint64_t limit = proto_claim_limit(word, next);

		while (bhead) {
			uint64_t seq = bhead->m.first + bhead->next;
			if (seq >= next && seq < limit)
				break;
			if (++bhead->next == bhead->m.count)
				drop_batch();
		}
		if (bhead == NULL)
			return false;
		if (bhead->m.first + bhead->next != next) {
			syslog(LOG_ERR, "jobrund-worker: job %s: task %llu is not the "
			       "next to claim (%llu)", job_name,
			       (unsigned long long)(bhead->m.first + bhead->next),
			       (unsigned long long)next);
			worker_exit(1);
		}
		if (!atomic_compare_exchange_strong_explicit(&shm->claim, &word,
			    proto_claim(next + 1, limit), memory_order_acq_rel,
			    memory_order_acquire))
			continue;       /* the daemon changed it: look again */
		claim_ref = next + 1;
		*id = next;
		*input = bhead->m.inputs[bhead->next];
		*timeout_s = bhead->m.timeout_s;
		return true;
	}
}

/* Done with the claimed task at the head of the batches. */
static void
release_task(void)
{
	if (bhead && ++bhead->next == bhead->m.count)
		drop_batch();
}

static void
set_running(uint64_t run_seq, uint64_t start_ns)
{
	/* Odd while changing, even after, whatever a stray write left
	 * there: one such write does not blind the daemon for good. */
	uint64_t gen = atomic_load_explicit(&shm->run_gen, memory_order_relaxed) | 1;

	atomic_store_explicit(&shm->run_gen, gen, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&shm->run_seq, run_seq, memory_order_relaxed);
	atomic_store_explicit(&shm->run_start, start_ns, memory_order_relaxed);
	atomic_store_explicit(&shm->run_gen, gen + 1, memory_order_release);
}

/* What the job asked for, before any plugin code runs: directory,
 * limits (raising a hard limit needs root, so before dropping it), then
 * groups and user.  Any failure is fatal: a worker running with the
 * wrong identity or without its limits must not run tasks. */
static void
apply_limits_and_identity(const struct msg_hello *h)
{
	for (int i = 0; i < JR_RLIMITS; i++) {
		struct rlimit rl;

		if (h->rlimit[i] < 0)
			continue;
		rl.rlim_cur = rl.rlim_max = h->rlimit[i] == INT64_MAX ?
			RLIM_INFINITY : (rlim_t)h->rlimit[i];
		/* CPU: SIGXCPU at the limit, SIGKILL one second later (the
		 * hard limit), so a crash says why. */
		if (rlimit_resources[i] == RLIMIT_CPU && rl.rlim_max != RLIM_INFINITY)
			rl.rlim_max = rl.rlim_cur + 1;
		if (setrlimit(rlimit_resources[i], &rl) == -1)
			fail("rlimits.%s = %lld: %s", rlimit_names[i],
			     (long long)h->rlimit[i], strerror(errno));
	}
	if (h->set_gid) {
		gid_t gid = (gid_t)h->gid;

		if (h->user ? initgroups(h->user, gid) == -1 :
			      setgroups(1, &gid) == -1)
			fail("cannot set supplementary groups: %s", strerror(errno));
		if (setresgid(gid, gid, gid) == -1)
			fail("cannot switch to gid %u: %s", (unsigned)gid, strerror(errno));
	}
	if (h->user) {
		uid_t uid = (uid_t)h->uid;

		if (setresuid(uid, uid, uid) == -1)
			fail("cannot switch to user %s (uid %u): %s", h->user,
			     (unsigned)uid, strerror(errno));
		if (uid != 0 && setuid(0) == 0)
			fail("dropped to user %s but could regain root", h->user);
	}
	/* A change of credentials clears the death signal: set it again. */
	if (h->set_gid || h->user)
		prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (h->cwd && chdir(h->cwd) == -1)
		fail("cwd %s: %s", h->cwd, strerror(errno));
}

/* The CPU time of the whole process, children included: an exec'd
 * command's time belongs to the task. */
static double
process_cpu_now(void)
{
	struct timespec self;
	struct rusage kids;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &self);
	getrusage(RUSAGE_CHILDREN, &kids);
	return ts_to_s(&self) + (double)(kids.ru_utime.tv_sec + kids.ru_stime.tv_sec) +
	       (double)(kids.ru_utime.tv_usec + kids.ru_stime.tv_usec) / 1e6;
}

static uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Add M to the spool (or, big, send it at once). */
static void
spool_result(const struct msg_result *m, double now)
{
	size_t size = proto_result_size(m);

	if (spool_used + size > PROTO_SPOOL_SIZE)
		send_results();
	/* A big one goes at once (after those before it): the spool stays
	 * small, and nothing sits unsent behind it anyway. */
	if (size > SEND_BYTES) {
		send_results();
		pthread_mutex_lock(&send_lock);
		proto_put_result(&sendbuf, m);
		send_frames();
		pthread_mutex_unlock(&send_lock);
		return;
	}
	struct pbuf sb = { spool + spool_used, 0, PROTO_SPOOL_SIZE - spool_used };
	proto_put_result(&sb, m);
	if (spool_used == 0)
		spool_since = now;
	spool_used += sb.len;
	atomic_store_explicit(&shm->spool_len, spool_used, memory_order_release);
}

/* Run task ID; false when the daemon is gone. */
static bool
run_one(const struct jr_plugin *pl, void *state, uint64_t id, const char *input,
	double timeout_s)
{
	struct jr_task t;
	struct task_result r = { 0 };
	struct msg_result mr;
	uint64_t out0, start_ns;
	double now;
	bool wrote;

	current_id = id;
	current_cancelled = false;
	current_running = true;
	outwatch_arm();
	out0 = atomic_load_explicit(&shm->out_gen, memory_order_acquire);
	host_task_init(&t, job_name, input, timeout_s);
	t.cancel_check = worker_cancel_check;
	/* The task's clock starts here, as close to the plugin's run as
	 * the running-task mark allows: its wall time is the plugin's. */
	start_ns = mono_ns();
	set_running(id + 1, start_ns);
	/* A task's CPU time is the whole process's, children included (an
	 * exec'd command's time belongs to the task), measured as host.c
	 * measures a thread's: read only around tasks long enough to pay. */
	host_run_task_clocked(pl, state, &t, &r, process_cpu_now,
			      (double)start_ns / 1e9);
	set_running(0, 0);
	current_running = false;
	/* Its end, from host_run_task's clock readings (it started at
	 * start_ns): no more readings here. */
	now = (double)start_ns / 1e9 + r.wall_s;
	/* Did it write to stdout or stderr?  The watch says (outwatch.c);
	 * where it is a FIONREAD, the daemon may have read the bytes out
	 * meanwhile: it bumps out_gen around each read (looked at after the
	 * pipe, so a read in between is seen). */
	wrote = outwatch_wrote();
	wrote |= (out0 & 1) != 0 ||
		 atomic_load_explicit(&shm->out_gen, memory_order_acquire) != out0;

	memset(&mr, 0, sizeof mr);
	mr.id = id;
	mr.status = r.status;
	mr.flags = wrote ? PROTO_RESULT_OUTPUT : 0;
	mr.output = r.output;
	mr.output_len = r.output_len;
	mr.error = r.error;
	mr.error_len = r.error ? strlen(r.error) : 0;
	mr.started_sec = r.started.tv_sec;
	mr.started_nsec = (int32_t)r.started.tv_nsec;
	mr.wall_s = r.wall_s;
	mr.cpu_s = r.cpu_s;
	spool_result(&mr, now);
	result_clear(&r);
	host_task_release(&t);
	release_task();
	if (daemon_gone) {
		send_results();
		return false;
	}
	if (wrote) {
		/* Its output must be counted with it, not with the next: wait
		 * until the daemon has taken it. */
		bool acked = false;

		send_results();
		host_timing_idle();
		while (!acked)
			if (!read_frames(id, &acked))
				return false;
	} else if (spool_used >= SEND_BYTES || now - spool_since >= SEND_AFTER ||
		   bhead == NULL) {
		/* Also at the end of each batch: the daemon sends the next
		 * one on seeing the results of the last. */
		send_results();
		host_timing_idle();
	}
	return true;
}

/* Claim and run tasks until the socket closes. */
static void
serve(const struct jr_plugin *pl, void *state)
{
	for (;;) {
		const char *input;
		double timeout_s;
		uint64_t id;
		bool acked;

		if (claim_task(&id, &input, &timeout_s)) {
			if (!run_one(pl, state, id, input, timeout_s))
				return;
			continue;
		}
		send_results();
		host_timing_idle();
		if (!read_frames(UINT64_MAX, &acked))
			return;
	}
}

/* The block shared with the daemon, on fd 4: map it, keep it from the
 * plugin's children, close the fd. */
static void
map_shared(void)
{
	struct stat st;
	void *p;

	if (fstat(SHM_FD, &st) == -1 || st.st_size != (off_t)PROTO_SHM_SIZE) {
		syslog(LOG_ERR, "jobrund-worker: fd %d is not the shared block", SHM_FD);
		worker_exit(1);
	}
	p = mmap(NULL, PROTO_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, SHM_FD, 0);
	if (p == MAP_FAILED) {
		syslog(LOG_ERR, "jobrund-worker: mmap: %m");
		worker_exit(1);
	}
	madvise(p, PROTO_SHM_SIZE, MADV_DONTFORK);
	close(SHM_FD);
	shm = p;
	spool = PROTO_SHM_SPOOL(shm);
}

int
main(int argc, char **argv)
{
	struct stat st;
	struct msg_hello hello;
	struct msg_ready ready;
	struct plugin *plugin;
	const struct jr_plugin *pl;
	config_t tree;
	struct jr_job hj;
	struct errlist errs = { 0 };
	void *state = NULL;
	char err[1024];
	uint8_t type;
	const uint8_t *p;
	size_t len;
	int rc;
	bool ring;

	/* The worker factory returns here only in a worker it forked, set up
	 * as if exec'd. */
	if (argc > 1 && strcmp(argv[1], FACTORY_ARG) == 0)
		factory_main(argc, argv);
	if (fstat(WORKER_FD, &st) == -1 || !S_ISSOCK(st.st_mode)) {
		fprintf(stderr, "%s: jobrund-worker is started by jobrund, not by hand\n",
			argv[0]);
		return 2;
	}
	/* Die with the daemon; the socket's EOF covers the window before
	 * this call, when the daemon may already be gone. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGPIPE, SIG_IGN);
	openlog("jobrund", LOG_PID, LOG_DAEMON);
	map_shared();
	/* Only fds 0-3 belong here, whatever a careless parent leaked. */
	close_range(WORKER_FD + 1, ~0U, 0);
	pconn_init(&conn, WORKER_FD);

	if (!wait_frame(&type, &p, &len))
		return 0;
	if (type != MSG_HELLO || proto_get_hello(p, len, &hello) == -1)
		fail("expected a HELLO message");
	if (hello.version != PROTO_VERSION)
		fail("protocol version %u, but this worker speaks %u: "
		     "jobrund and jobrund-worker are from different builds",
		     hello.version, PROTO_VERSION);
	job_name = hello.job;
	/* Lines go to the daemon (log_to_daemon), and syslog's socket opens
	 * only if one cannot: a plugin sees nothing open but fds 0-3. */
	log_set_level(hello.log_level);
	closelog();
	host_set_log_hook(log_to_daemon);
	/* While still the daemon's user: the pipe is the daemon's, and a
	 * job's user may not reopen it. */
	ring = outwatch_start(job_name, log_to_daemon);
	if (log_enabled(LOG_DEBUG)) {
		char line[128];

		snprintf(line, sizeof line, "worker %d: output pipe watched %s",
			 (int)getpid(), ring ? "through io_uring" : "by FIONREAD");
		log_to_daemon(LOG_DEBUG, job_name, line);
	}
	apply_limits_and_identity(&hello);

	plugin = loader_open(hello.plugin_dir, hello.plugin, err, sizeof err);
	if (plugin == NULL)
		fail("%s", err);
	pl = loader_descriptor(plugin);

	config_init(&tree);
	memset(&hj, 0, sizeof hj);
	hj.name = hello.job;
	hj.file = hello.config_file;
	hj.errs = &errs;
	if (hello.settings) {
		if (cfg_settings_from_text(hello.settings, &tree, err, sizeof err) == -1)
			fail("settings: %s", err);
		hj.settings = config_root_setting(&tree);
	}
	rc = host_plugin_init(pl, &hj, &state);
	if (rc != 0) {
		char msg[2048] = "";
		for (size_t i = 0; i < errs.n; i++)
			snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "%s%s",
				 i ? "; " : "", errs.msgs[i]);
		fail("plugin %s: init failed: %s", hello.plugin,
		     errs.n ? msg : strerror(rc));
	}

	ready.version = PROTO_VERSION;
	ready.pid = (int32_t)getpid();
	proto_put_ready(&sendbuf, &ready);
	send_frames();

	serve(pl, state);
	if (pl->fini)
		pl->fini(&host_table, state);
	/* Tidy, so that memcheck's view of a worker is clean. */
	host_job_release(&hj);
	errlist_free(&errs);
	config_destroy(&tree);
	loader_close(plugin);
	proto_hello_free(&hello);
	while (bhead)
		drop_batch();
	pconn_free(&conn);
	pbuf_free(&sendbuf);
	munmap(shm, PROTO_SHM_SIZE);
	worker_exit(0);
}
