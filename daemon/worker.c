/*
 * worker.c - jobrund-worker, the process that runs one job's tasks in
 * process mode.
 *
 * jobrund starts it with posix_spawn, its socketpair end on fd 3, a clean
 * signal mask and nothing else open.  The worker reads HELLO, loads and
 * initialises the plugin once (with the same loader checks as the daemon),
 * answers READY, then runs TASKs one at a time until the socket closes.
 * A plugin that crashes takes only this process down; the daemon records
 * the task as crashed and starts another worker.
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
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

#define WORKER_FD 3

static struct pconn conn;
static struct pbuf sendbuf;
/* Guards sendbuf: a plugin may log from threads of its own. */
static pthread_mutex_t send_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *job_name = "?";

/* The current task, for cancellation checks. */
static uint64_t current_id;
static bool current_cancelled;
static bool daemon_gone;

static void JR_NORETURN
worker_exit(int status)
{
	/* _exit: a plugin's atexit handlers or static destructors must not
	 * run twice or touch the daemon's state. */
	_exit(status);
}

/* Send one queued frame, blocking: the daemon always reads. */
static void
send_frames(void)
{
	conn.out = sendbuf;
	if (pconn_flush(&conn) == -1) {
		if (errno == EPIPE || errno == ECONNRESET)
			worker_exit(0);
		syslog(LOG_ERR, "jobrund-worker: job %s: write to daemon: %m", job_name);
		worker_exit(1);
	}
	sendbuf = conn.out;
	conn.out = (struct pbuf){ 0 };
	sendbuf.len = 0;
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

/* Handle one frame that arrived while a task runs (or between tasks). */
static void
handle_async_frame(uint8_t type, const uint8_t *p, size_t len)
{
	struct msg_cancel c;

	if (type == MSG_CANCEL && proto_get_cancel(p, len, &c) == 0) {
		if (c.id == current_id)
			current_cancelled = true;
		return;
	}
	syslog(LOG_ERR, "jobrund-worker: job %s: unexpected message %u during a task",
	       job_name, type);
	worker_exit(1);
}

/* The task's cancel hook: look at the socket without blocking. */
static int
worker_cancel_check(struct jr_task *t)
{
	struct pollfd pfd = { .fd = WORKER_FD, .events = POLLIN };
	uint8_t type;
	const uint8_t *p;
	size_t len;

	int rc;

	(void)t;
	if (current_cancelled || daemon_gone)
		return 1;
	/* A CANCEL may have come in the same read as its TASK. */
	while ((rc = pconn_next(&conn, &type, &p, &len)) == 1)
		handle_async_frame(type, p, len);
	if (rc == -1)
		worker_exit(1);
	while (poll(&pfd, 1, 0) == 1) {
		ssize_t n = pconn_read(&conn);
		if (n <= 0) {
			daemon_gone = true;
			return 1;
		}
		while ((rc = pconn_next(&conn, &type, &p, &len)) == 1)
			handle_async_frame(type, p, len);
		if (rc == -1)
			worker_exit(1);
	}
	return current_cancelled || daemon_gone;
}

/* Block until a frame arrives; returns 0 at EOF. */
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

static double
process_cpu_now(void)
{
	struct rusage self, kids;

	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &kids);
	return (double)(self.ru_utime.tv_sec + self.ru_stime.tv_sec +
			kids.ru_utime.tv_sec + kids.ru_stime.tv_sec) +
	       (double)(self.ru_utime.tv_usec + self.ru_stime.tv_usec +
			kids.ru_utime.tv_usec + kids.ru_stime.tv_usec) / 1e6;
}

static void
run_one(const struct jr_plugin *pl, void *state, const struct msg_task *mt)
{
	struct jr_task t;
	struct task_result r = { 0 };
	struct msg_result mr;
	double cpu0;

	current_id = mt->id;
	current_cancelled = false;
	host_task_init(&t, job_name, mt->input, mt->timeout_s);
	t.cancel_check = worker_cancel_check;
	cpu0 = process_cpu_now();
	host_run_task(pl, state, &t, &r);
	/* The whole process's CPU, children included: an exec'd command's
	 * time belongs to the task. */
	r.cpu_s = process_cpu_now() - cpu0;

	memset(&mr, 0, sizeof mr);
	mr.id = mt->id;
	mr.status = r.status;
	mr.output = r.output;
	mr.output_len = r.output_len;
	mr.error = r.error;
	mr.started_sec = r.started.tv_sec;
	mr.started_nsec = (int32_t)r.started.tv_nsec;
	mr.wall_s = r.wall_s;
	mr.cpu_s = r.cpu_s;
	pthread_mutex_lock(&send_lock);
	proto_put_result(&sendbuf, &mr);
	send_frames();
	pthread_mutex_unlock(&send_lock);
	result_clear(&r);
	host_task_release(&t);
	if (daemon_gone)
		worker_exit(0);
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

	(void)argc;
	if (fstat(WORKER_FD, &st) == -1 || !S_ISSOCK(st.st_mode)) {
		fprintf(stderr, "%s: jobrund-worker is started by jobrund, not by hand\n",
			argv[0]);
		return 2;
	}
	/* Die with the daemon; the socket's EOF covers the window before
	 * this call, when the daemon may already be gone. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Only fds 0-3 belong here, whatever a careless parent leaked. */
	close_range(WORKER_FD + 1, ~0U, 0);
	signal(SIGPIPE, SIG_IGN);
	openlog("jobrund", LOG_PID, LOG_DAEMON);
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
	log_init("jobrund", false, hello.log_level);
	/* Reopen syslog's socket only when there is something to log, so that
	 * a plugin sees nothing open but fds 0-3. */
	closelog();
	host_set_log_hook(log_to_daemon);
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

	while (wait_frame(&type, &p, &len)) {
		struct msg_task mt;

		if (type == MSG_CANCEL)
			continue;       /* for a task that already finished */
		if (type != MSG_TASK || proto_get_task(p, len, &mt) == -1) {
			syslog(LOG_ERR, "jobrund-worker: job %s: bad message %u from daemon",
			       job_name, type);
			worker_exit(1);
		}
		run_one(pl, state, &mt);
		proto_task_free(&mt);
	}
	if (pl->fini)
		pl->fini(&host_table, state);
	/* Tidy, so that memcheck's view of a worker is clean. */
	host_job_release(&hj);
	errlist_free(&errs);
	config_destroy(&tree);
	loader_close(plugin);
	proto_hello_free(&hello);
	pconn_free(&conn);
	pbuf_free(&sendbuf);
	worker_exit(0);
}
