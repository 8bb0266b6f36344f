/*
 * factory.c - the worker factory, from the daemon's side: start it, ask
 * it for workers, notice when it is gone.
 *
 * A process-mode worker started with posix_spawn costs an exec and the
 * dynamic linking of jobrund-worker: 1-2 ms before it can load its
 * plugin, with the daemon's main thread waiting for the exec.  The
 * factory is one jobrund-worker started once (worker_factory.c), which
 * forks workers on request: a few hundred microseconds each, the main
 * thread waiting only for the fork.  Workers it forks are born the
 * daemon's children (CLONE_PARENT), so sup.c supervises them exactly as
 * the ones it spawns itself.
 *
 * Used when the config's worker_factory is true (the default) and the
 * worker's environment has the factory's values of the variables only an
 * exec reads (LD_*, MALLOC_*, GLIBC_TUNABLES, *SAN_OPTIONS), taken from
 * the daemon's; other workers are exec'd.  The factory's environment
 * holds those and nothing else of the daemon's, since a forked worker's
 * memory and /proc/PID/environ show it; the factory wipes each request (a
 * job's env) after forking.
 *
 * When the factory cannot work here (it says why, once), cannot be
 * started, dies or stops answering, workers are exec'd with posix_spawn;
 * the factory is started again with the first worker FACTORY_RETRY_S
 * later (then 10 s, 20 s... up to 5 minutes while it keeps failing; never
 * when it cannot work here).  It starts with the daemon when the config
 * has an enabled process-mode job (else with the first worker), and again
 * at a reload that turns worker_factory on or finds it outdated:
 * jobrund-worker replaced (an upgrade), other exec-time variables, or
 * other resource limits, nice value or CPU affinity, which a fork
 * inherits from the factory where an exec takes the daemon's.
 *
 * The main thread sends the SPAWN requests for the workers it starts
 * together (up to FACTORY_PIPELINE: a cold pool's), then reads their
 * SPAWNED answers in order, waiting at most FACTORY_ANSWER_S for each:
 * the factory forks the next while the daemon greets the one before.  All
 * are answered before the loop runs again, so a worker's pid is known
 * before the reaper can meet it, but one the factory forked after we gave
 * up on it (FACTORY_LOST, or no descriptor left for its pidfd): that one
 * exits as its socket closes, and the reaper reaps it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/pidfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "jobrund.h"

#define FACTORY_FD 3
#define FACTORY_ANSWER_S 2.0            /* a fork takes < 1 ms */
#define FACTORY_RETRY_S 5.0             /* after it failed or died... */
#define FACTORY_RETRY_MAX_S 300.0       /* ...doubled each time, up to */

/* The process attributes a fork inherits and an exec would have taken
 * from the daemon at the time: a reload restarts the factory when the
 * administrator changed them (prlimit, renice, taskset). */
struct attrs {
	struct rlimit rlim[RLIM_NLIMITS];
	int nice;
	cpu_set_t cpus;
};

static void
attrs_read(struct attrs *a)
{
	memset(a, 0, sizeof *a);
	for (int r = 0; r < RLIM_NLIMITS; r++)
		getrlimit((__rlimit_resource_t)r, &a->rlim[r]);
	errno = 0;
	a->nice = getpriority(PRIO_PROCESS, 0);
	sched_getaffinity(0, sizeof a->cpus, &a->cpus);
}

static struct {
	bool wanted;                    /* the config's worker_factory */
	bool cannot;                    /* it said it cannot work here */
	pid_t pid;                      /* 0: not running */
	int pidfd, sock;
	struct loop_watch *pid_w;
	double retry_at;                /* mono_now(): not started before */
	int failures;                   /* in a row, since the last READY */
	char **env;                     /* what it was started with */
	struct stat exe;                /* ...and from (jobrund-worker) */
	struct attrs attrs;             /* the daemon's, which it took */
	unsigned long asked[FACTORY_PIPELINE]; /* requests not yet answered,
						  oldest first */
	int nasked;
} fac = { .pidfd = -1, .sock = -1 };

/* It failed: not again for a while, longer each time, so that a factory
 * that hangs costs the loop FACTORY_ANSWER_S now and then, not often. */
static void
back_off(void)
{
	double wait = FACTORY_RETRY_S;

	for (int i = 0; i < fac.failures && wait < FACTORY_RETRY_MAX_S; i++)
		wait *= 2;
	fac.retry_at = mono_now() + (wait < FACTORY_RETRY_MAX_S ? wait : FACTORY_RETRY_MAX_S);
	fac.failures++;
}

/* Forget the factory, killing it if it still runs; WHY for the log (NULL:
 * a deliberate stop, nothing to say). */
static void
drop(const char *why)
{
	if (fac.pid == 0)
		return;
	if (why)
		log_msg(LOG_WARNING, "worker factory %d: %s; workers are started "
			"with posix_spawn until it is restarted", (int)fac.pid, why);
	if (fac.pid_w)
		loop_remove(fac.pid_w);
	fac.pid_w = NULL;
	close(fac.sock);
	fac.sock = -1;
	/* Closing its socket ends it; SIGKILL covers a factory that hangs. */
	pidfd_send_signal(fac.pidfd, SIGKILL, NULL, 0);
	while (waitid(P_PIDFD, (id_t)fac.pidfd, &(siginfo_t){ 0 }, WEXITED) == -1 &&
	       errno == EINTR)
		;
	close(fac.pidfd);
	fac.pidfd = -1;
	fac.pid = 0;
	fac.nasked = 0;                 /* those requests died with it */
	if (why)
		back_off();
}

static void
on_exit_event(int fd, uint32_t events, void *arg)
{
	siginfo_t si = { 0 };
	char why[96];

	(void)fd;
	(void)events;
	(void)arg;
	if (waitid(P_PIDFD, (id_t)fac.pidfd, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
	    si.si_pid == 0)
		return;         /* not yet */
	if (si.si_code == CLD_EXITED)
		snprintf(why, sizeof why, "exited with status %d", si.si_status);
	else
		snprintf(why, sizeof why, "killed by signal %d (%s)", si.si_status,
			 sigabbrev_np(si.si_status) ? sigabbrev_np(si.si_status) : "?");
	drop(why);
}

/* Wait for a frame on the factory's socket: its type and payload in BUF,
 * and in *FD a descriptor sent with it (-1: none; *FD_LOST when one was
 * sent but we had no descriptor free for it).  -1 with errno. */
static int
receive(uint8_t *buf, size_t size, uint8_t *type, const uint8_t **payload,
	size_t *plen, int *fd, bool *fd_lost)
{
	struct pollfd pfd = { fac.sock, POLLIN, 0 };
	double until = mono_now() + FACTORY_ANSWER_S;
	size_t off = 0, nfds;
	int flags;
	ssize_t n;

	*fd = -1;
	for (;;) {
		int ms = (int)((until - mono_now()) * 1000) + 1;
		int rc = ms > 0 ? poll(&pfd, 1, ms) : 0;

		if (rc == 1)
			break;
		if (rc == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
	n = recv_with_fds(fac.sock, buf, size, fd, 1, &nfds, &flags);
	if (n == 0)
		errno = ECONNRESET;
	if (n <= 0)
		return -1;
	*fd_lost = (flags & MSG_CTRUNC) != 0;
	if ((flags & MSG_TRUNC) ||
	    proto_next_frame(buf, (size_t)n, &off, type, payload, plen) != 1 ||
	    off != (size_t)n) {
		if (*fd != -1)
			close(*fd);
		*fd = -1;
		errno = EPROTO;
		return -1;
	}
	return 0;
}

/* Would the dynamic loader or glibc's start-up read VAR (a NAME=value)?
 * Only at exec: a fork has long passed that point, so a worker forks
 * only when it wants the factory's, all of them and no other. */
static bool
startup_variable(const char *var)
{
	const char *eq = strchr(var, '=');
	size_t name = eq ? (size_t)(eq - var) : strlen(var);

	/* And a sanitizer runtime's options (ASAN_OPTIONS...): read at
	 * start-up too, they decide, say, whether a SIGSEGV is a signal. */
	return strncmp(var, "LD_", 3) == 0 || strncmp(var, "MALLOC_", 7) == 0 ||
	       strncmp(var, "GLIBC_TUNABLES=", 15) == 0 ||
	       (name >= 11 && strncmp(var + name - 11, "SAN_OPTIONS", 11) == 0);
}

/* The factory's environment: the daemon's start-up variables, which it
 * needs as an exec'd worker would, and room for a worker's tags
 * (worker_factory.c writes them there); nothing else, for a forked
 * worker's memory and /proc/PID/environ show it. */
static char **
factory_environment(void)
{
	size_t n = 0, count = 0;
	char **envp;

	for (char **e = environ; *e; e++)
		count++;
	envp = xcalloc(count + 3, sizeof *envp);
	for (char **e = environ; *e; e++)
		if (startup_variable(*e))
			envp[n++] = xstrdup(*e);
	envp[n++] = xasprintf("JOBRUND_JOB=%*s", JOB_NAME_MAX, "");
	envp[n++] = xasprintf("JOBRUND_WORKER=%*s", 40, "");
	envp[n] = NULL;
	return envp;
}

/* Has ENVP exactly the start-up variables of FACTORY_ENV (the factory's),
 * no more, no fewer? */
static bool
same_startup_variables(char *const envp[], char *const factory_env[])
{
	size_t mine = 0, theirs = 0;

	for (char *const *e = envp; *e; e++) {
		if (!startup_variable(*e))
			continue;
		mine++;
		bool found = false;
		for (char *const *f = factory_env; *f && !found; f++)
			found = strcmp(*e, *f) == 0;
		if (!found)
			return false;
	}
	for (char *const *f = factory_env; *f; f++)
		theirs += startup_variable(*f);
	return mine == theirs;
}

/* Start the factory.  On the main thread, always: the factory's parent
 * thread becomes its workers' (CLONE_PARENT), and their death signal
 * (PR_SET_PDEATHSIG) fires when that thread ends. */
static void
start(void)
{
	const char *path = sup_worker_path();
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	char title[] = "jobrund: worker factory", arg[] = FACTORY_ARG;
	char room[JOB_NAME_MAX + 24];
	char *argv[4], **envp;
	int sv[2], rc, fd;
	uint8_t buf[256], type;
	const uint8_t *payload;
	size_t plen;
	struct msg_ready ready;
	bool fd_lost;
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) {
		log_warn("worker factory: socketpair");
		back_off();
		return;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, sv[1], FACTORY_FD);
	sup_spawnattr_init(&attr);
	memset(room, ' ', sizeof room - 1);
	room[sizeof room - 1] = '\0';
	argv[0] = title;
	argv[1] = arg;
	argv[2] = room;
	argv[3] = NULL;
	envp = factory_environment();
	if (stat(path, &fac.exe) == -1)
		memset(&fac.exe, 0, sizeof fac.exe);
	attrs_read(&fac.attrs);
	rc = posix_spawn(&pid, path, &fa, &attr, argv, envp);
	strv_free(fac.env);
	fac.env = envp;
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(sv[1]);
	if (rc != 0) {
		errno = rc;
		log_warn("worker factory: cannot start %s", path);
		close(sv[0]);
		back_off();
		return;
	}
	fac.pid = pid;
	fac.sock = sv[0];
	fac.pidfd = pidfd_open(pid, 0);
	if (fac.pidfd == -1) {
		log_warn("worker factory: pidfd_open(%d)", (int)pid);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close(fac.sock);
		fac.sock = -1;
		fac.pid = 0;
		back_off();
		return;
	}
	fcntl(fac.pidfd, F_SETFD, FD_CLOEXEC);
	if (receive(buf, sizeof buf, &type, &payload, &plen, &fd, &fd_lost) == -1) {
		drop(errno == ETIMEDOUT ? "did not start in time" :
		     "did not start (see its messages above)");
		return;
	}
	if (fd != -1)
		close(fd);
	if (type == MSG_FAIL) {
		struct msg_fail fail;

		/* A property of this kernel or sandbox: retried at reload
		 * only. */
		if (proto_get_fail(payload, plen, &fail) == 0) {
			log_msg(LOG_NOTICE, "worker factory cannot work here (%s): "
				"workers are started with posix_spawn", fail.message);
			proto_fail_free(&fail);
		}
		drop(NULL);
		fac.cannot = true;
		return;
	}
	if (type != MSG_READY || proto_get_ready(payload, plen, &ready) == -1 ||
	    ready.version != PROTO_VERSION) {
		drop("is from another build of jobrund (protocol version differs)");
		return;
	}
	fac.pid_w = loop_add(fac.pidfd, EPOLLIN, on_exit_event, NULL);
	fac.failures = 0;
	log_msg(LOG_INFO, "worker factory %d started", (int)pid);
}

/* Would a factory started now differ from the last one: another
 * jobrund-worker (an upgrade), other exec-time variables, other process
 * attributes? */
static bool
factory_outdated(void)
{
	struct attrs now;
	struct stat st;
	char **envp;
	bool same;

	if (fac.env == NULL)
		return true;
	attrs_read(&now);
	if (memcmp(&now, &fac.attrs, sizeof now) != 0)
		return true;
	if (stat(sup_worker_path(), &st) == -1 || st.st_dev != fac.exe.st_dev ||
	    st.st_ino != fac.exe.st_ino ||
	    st.st_mtim.tv_sec != fac.exe.st_mtim.tv_sec ||
	    st.st_mtim.tv_nsec != fac.exe.st_mtim.tv_nsec ||
	    st.st_ctim.tv_sec != fac.exe.st_ctim.tv_sec ||
	    st.st_ctim.tv_nsec != fac.exe.st_ctim.tv_nsec)
		return true;
	envp = factory_environment();
	same = same_startup_variables(envp, fac.env);
	strv_free(envp);
	return !same;
}

void
factory_apply(const struct jr_config *cfg, bool force)
{
	bool process_jobs = force, toggled = fac.wanted != cfg->worker_factory;

	for (size_t i = 0; i < cfg->njobs && !process_jobs; i++)
		process_jobs = cfg->jobs[i].mode == MODE_PROCESS && cfg->jobs[i].enabled;
	fac.wanted = cfg->worker_factory;
	if (!fac.wanted) {
		drop(NULL);
		return;
	}
	/* A reload keeps a factory that is still what it would start: a
	 * reload storm costs no restarts, and one that hangs or cannot
	 * work here is not tried again at each SIGHUP. */
	if (!toggled && !factory_outdated()) {
		if (fac.pid == 0 && !fac.cannot && process_jobs &&
		    mono_now() >= fac.retry_at)
			start();
		return;
	}
	drop(NULL);
	fac.failures = 0;
	fac.retry_at = 0;
	fac.cannot = false;
	/* Without an enabled process-mode job, a factory would only take
	 * memory: then it starts with the first worker asked for. */
	if (process_jobs)
		start();
}

void
factory_stop(void)
{
	drop(NULL);
	strv_free(fac.env);
	fac.env = NULL;
}

pid_t
factory_pid(void)
{
	return fac.pid;
}

int
factory_ask(unsigned long seq, const char *job, char *const envp[], const int fds[3])
{
	struct msg_spawn rq = { .seq = seq, .job = job };
	struct pbuf b = { 0 };
	ssize_t sent;
	int err;

	if (!fac.wanted)
		return FACTORY_UNAVAILABLE;
	if (fac.nasked == FACTORY_PIPELINE)
		return FACTORY_BUSY;
	/* (A worker that could not be forked does not start a factory.) */
	if (fac.pid == 0 && !fac.cannot && mono_now() >= fac.retry_at &&
	    (fac.env == NULL || same_startup_variables(envp, fac.env)))
		start();
	if (fac.pid == 0 || !same_startup_variables(envp, fac.env))
		return FACTORY_UNAVAILABLE;
	for (char *const *e = envp; *e; e++)
		rq.nenv++;
	rq.env = (const char **)(uintptr_t)envp;
	proto_put_spawn(&b, &rq);
	if (b.len > FACTORY_MAX_REQUEST) {
		log_debug("job %s: environment too large for the worker factory", job);
		pbuf_free(&b);
		return FACTORY_UNAVAILABLE;
	}

	/* Into an empty socket a request of FACTORY_MAX_REQUEST at most
	 * goes at once; behind others it may not, and a factory that hangs
	 * would hold the loop for ever: not now, then. */
	sent = send_with_fds(fac.sock, b.data, b.len, fds, 3,
			     fac.nasked > 0 ? MSG_DONTWAIT : 0);
	err = errno;
	pbuf_free(&b);
	if (sent == -1 && (err == EAGAIN || err == EWOULDBLOCK) && fac.nasked > 0)
		return FACTORY_BUSY;
	if (sent == -1 && err == EMSGSIZE) {
		/* More than this socket takes in one message (a small
		 * wmem_max): this worker is exec'd, the factory stays. */
		log_debug("job %s: environment too large for the worker "
			  "factory's socket", job);
		return FACTORY_UNAVAILABLE;
	}
	if (sent == -1) {
		char why[128];

		snprintf(why, sizeof why, "cannot take a request: %s", strerror(err));
		drop(why);
		return FACTORY_UNAVAILABLE;
	}
	fac.asked[fac.nasked++] = seq;
	return 0;
}

int
factory_answer(unsigned long seq, pid_t *pid, int *pidfd)
{
	struct msg_spawned ans;
	uint8_t buf[256], type;
	const uint8_t *payload;
	size_t plen;
	int fd = -1;
	bool fd_lost;

	/* From the request on, the factory may have forked a worker holding
	 * its descriptors: the caller must not hand them to another.  A
	 * worker we never hear of sees its socket close with them and
	 * exits.  Gone with the factory (drop) since it was asked: lost. */
	if (fac.nasked == 0 || fac.asked[0] != seq)
		return FACTORY_LOST;
	memmove(fac.asked, fac.asked + 1, --fac.nasked * sizeof fac.asked[0]);
	if (receive(buf, sizeof buf, &type, &payload, &plen, &fd, &fd_lost) == -1) {
		char why[128];

		snprintf(why, sizeof why, "%s", errno == ETIMEDOUT ?
			 "did not answer in time" : strerror(errno));
		drop(why);
		return FACTORY_LOST;
	}
	if (type != MSG_SPAWNED || proto_get_spawned(payload, plen, &ans) == -1 ||
	    ans.seq != seq || (ans.error == 0 && ans.pid <= 0) ||
	    (ans.error == 0 && fd == -1 && !fd_lost)) {
		if (fd != -1)
			close(fd);
		drop("answered what is not an answer");
		return FACTORY_LOST;
	}
	if (ans.error == 0 && fd_lost) {
		/* It forked a worker, but we have no descriptor for its
		 * pidfd: out of descriptors, as an exec would be.  Closing
		 * its ends (the caller) makes it exit. */
		errno = EMFILE;
		return -1;
	}
	if (fd != -1 && ans.error != 0)
		close(fd);
	if (ans.error == EAGAIN || ans.error == ENOMEM) {
		/* Out of processes or memory: an exec would be too. */
		errno = ans.error;
		return -1;
	}
	if (ans.error != 0) {
		char why[128];

		snprintf(why, sizeof why, "cannot fork: %s", strerror(ans.error));
		drop(why);
		return FACTORY_LOST;
	}
	*pid = ans.pid;
	*pidfd = fd;
	return 0;
}
