/*
 * reaper.c - processes that escaped their worker.
 *
 * A task may start processes that leave its worker's process group and
 * outlive their parent (setsid, a double fork): a kill of the worker's
 * group does not reach them.  jobrund is a child subreaper
 * (PR_SET_CHILD_SUBREAPER), so when such a process's parent dies the
 * kernel makes it a child of jobrund's main thread, and jobrund can find,
 * kill and reap it.
 *
 * Which job it belongs to is in its environment: every worker is started
 * with JOBRUND_JOB=<job> and JOBRUND_WORKER=<jobrund pid>.<n>, and
 * children inherit their parent's environment.  The rules:
 *   - an adopted process that has exited is reaped (no zombies);
 *   - one whose worker is gone is killed (its tasks are over);
 *   - when a job's last active run ends, the adopted processes of its
 *     workers are killed (no process of a job outlives its run);
 *   - at exit every adopted process is killed.
 * An adopted process whose environment cannot be read (it cleared it, or
 * switched user) is only killed at exit, and said so in the log.
 *
 * Only the main thread's children are looked at (/proc/self/task/TID/
 * children): that is where workers live and where orphans are adopted.
 * Children that thread-mode plugins start belong to the pool threads, and
 * those threads wait for them themselves; touching them would steal their
 * exit status.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "jobrund.h"

#define ENVIRON_TRIES 20             /* 100 us apart */

static int sigchld_fd = -1;
static pid_t self;

/* What /proc says about an adopted child. */
struct adoptee {
	pid_t pid;
	char state;                     /* from /proc/PID/stat; 0: gone */
	char job[128];                  /* "" when unknown */
	char worker[64];                /* "" when unknown */
};

static bool
read_state(struct adoptee *a)
{
	char path[64], buf[512], *p;
	FILE *fp;

	snprintf(path, sizeof path, "/proc/%d/stat", (int)a->pid);
	if ((fp = fopen(path, "re")) == NULL)
		return false;
	p = fgets(buf, sizeof buf, fp);
	fclose(fp);
	/* "pid (comm) S ppid ...": comm may hold spaces and parentheses. */
	if (p == NULL || (p = strrchr(buf, ')')) == NULL || p[1] != ' ')
		return false;
	a->state = p[2];
	return true;
}

/* Read A's environment into *ENV (LEN bytes); false if it cannot. */
static bool
read_environ(const struct adoptee *a, char **env, size_t *len)
{
	char path[64];
	size_t cap = 0;
	FILE *fp;

	*len = 0;
	snprintf(path, sizeof path, "/proc/%d/environ", (int)a->pid);
	if ((fp = fopen(path, "re")) == NULL)
		return false;
	for (;;) {
		if (*len == cap) {
			cap = cap ? cap * 2 : 4096;
			if (cap > (1u << 20))
				break;          /* absurd: give up, treat as unknown */
			*env = xrealloc(*env, cap + 1);
		}
		size_t n = fread(*env + *len, 1, cap - *len, fp);
		if (n == 0)
			break;
		*len += n;
	}
	fclose(fp);
	return true;
}

static void
read_tags(struct adoptee *a)
{
	char *env = NULL;
	size_t len = 0;

	a->job[0] = a->worker[0] = '\0';
	/* A process in the middle of execve shows an empty environment for
	 * a moment (its new memory is there, its environment not yet): a
	 * task's child exec'ing as its run ends would escape.  So look
	 * again, a few times over a couple of milliseconds; a process that
	 * really has no environment costs only that. */
	for (int tries = 0; tries < ENVIRON_TRIES; tries++) {
		if (!read_environ(a, &env, &len))
			break;
		if (len > 0)
			break;
		nanosleep(&(struct timespec){ .tv_nsec = 100 * 1000 }, NULL);
	}
	for (size_t i = 0; i < len; ) {
		const char *var = env + i;
		size_t vlen = strnlen(var, len - i);

		if (strncmp(var, "JOBRUND_JOB=", 12) == 0)
			snprintf(a->job, sizeof a->job, "%.*s", (int)(vlen - 12), var + 12);
		else if (strncmp(var, "JOBRUND_WORKER=", 15) == 0)
			snprintf(a->worker, sizeof a->worker, "%.*s", (int)(vlen - 15), var + 15);
		i += vlen + 1;
	}
	free(env);
}

/* Call FN for each child of the main thread that is not a worker (nor
 * the worker factory). */
static void
for_each_adoptee(void (*fn)(struct adoptee *a, void *arg), void *arg)
{
	char path[64], *buf = NULL, *save = NULL;
	size_t len = 0, cap = 0, n;
	FILE *fp;

	snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)self);
	if ((fp = fopen(path, "re")) == NULL)
		return;
	do {
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			buf = xrealloc(buf, cap + 1);
		}
		n = fread(buf + len, 1, cap - len, fp);
		len += n;
	} while (n > 0);
	fclose(fp);
	buf[len] = '\0';
	for (char *tok = strtok_r(buf, " \n", &save); tok;
	     tok = strtok_r(NULL, " \n", &save)) {
		struct adoptee a = { .pid = (pid_t)atoi(tok) };

		if (a.pid <= 0 || sup_is_worker(a.pid) || a.pid == factory_pid() ||
		    !read_state(&a))
			continue;
		fn(&a, arg);
	}
	free(buf);
}

/* Kill an adopted process and, when it leads one, its process group.
 * It is our unreaped child, so neither its pid nor its group id can have
 * been recycled. */
static void
kill_adoptee(const struct adoptee *a, const char *why)
{
	int fd = pidfd_open(a->pid, 0);

	log_msg(LOG_NOTICE, "killing process %d%s%s%s: %s", (int)a->pid,
		a->job[0] ? " of job " : "", a->job, a->job[0] ? "" : " (job unknown)",
		why);
	if (fd != -1) {
		pidfd_send_signal(fd, SIGKILL, NULL, 0);
		close(fd);
	}
	if (getpgid(a->pid) == a->pid)
		kill(-a->pid, SIGKILL);
}

static void
reap(const struct adoptee *a)
{
	int status;

	if (waitpid(a->pid, &status, WNOHANG) == a->pid)
		log_debug("reaped adopted process %d", (int)a->pid);
}

/* Is TAG one of this jobrund's workers that is still alive? */
static bool
worker_alive(const char *tag)
{
	char *dot;
	long pid = strtol(tag, &dot, 10);

	if (pid != (long)self || *dot != '.')
		return false;
	return sup_worker_seq_alive(strtoul(dot + 1, NULL, 10));
}

static void
scan_one(struct adoptee *a, void *arg)
{
	(void)arg;
	if (a->state == 'Z' || a->state == 'X') {
		reap(a);
		return;
	}
	read_tags(a);
	if (a->worker[0] && !worker_alive(a->worker))
		kill_adoptee(a, "its worker is gone");
}

void
reaper_scan(void)
{
	for_each_adoptee(scan_one, NULL);
}

struct kill_match {
	bool (*match)(const char *worker_tag, void *arg);
	void *arg;
	const char *why;
};

static void
kill_matching_one(struct adoptee *a, void *arg)
{
	struct kill_match *km = arg;

	if (a->state == 'Z' || a->state == 'X') {
		reap(a);
		return;
	}
	read_tags(a);
	if (km->match == NULL || (a->worker[0] && km->match(a->worker, km->arg)))
		kill_adoptee(a, km->why);
}

void
reaper_kill_matching(bool (*match)(const char *worker_tag, void *arg), void *arg,
		     const char *why)
{
	struct kill_match km = { match, arg, why };

	for_each_adoptee(kill_matching_one, &km);
}

void
reaper_kill_all(void)
{
	reaper_kill_matching(NULL, NULL, "jobrund is stopping");
}

static void
count_one(struct adoptee *a, void *arg)
{
	(void)a;
	(*(int *)arg)++;
}

int
reaper_adopted(void)
{
	int n = 0;

	for_each_adoptee(count_one, &n);
	return n;
}

static void
sigchld(int fd, uint32_t events, void *arg)
{
	struct signalfd_siginfo si;

	(void)events;
	(void)arg;
	/* Pending SIGCHLDs coalesce: one scan covers them all. */
	while (read(fd, &si, sizeof si) == (ssize_t)sizeof si)
		;
	reaper_scan();
}

void
reaper_init(void)
{
	sigset_t set;

	self = getpid();
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) == -1)
		log_warn("PR_SET_CHILD_SUBREAPER: escaped processes will not be "
			 "adopted");
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1)
		fatal("sigprocmask");
	sigchld_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigchld_fd == -1)
		fatal("signalfd");
	loop_add(sigchld_fd, EPOLLIN, sigchld, NULL);
}

void
reaper_shutdown(void)
{
	if (sigchld_fd != -1)
		close(sigchld_fd);
	sigchld_fd = -1;
}
