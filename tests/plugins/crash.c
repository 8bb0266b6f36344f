/*
 * crash.c - a test plugin that misbehaves on request, to exercise process
 * mode's supervision.  Input "segv" dies of a real SIGSEGV, "abort" of
 * SIGABRT, "exit3" exits with status 3, "hang" ignores SIGTERM and sleeps
 * for ever (only SIGKILL ends it), "spin" busy-loops without looking at
 * task_cancelled, "print" writes a line to stdout and one to stderr (which
 * the daemon must log, never mix into results), "print:thread" has a
 * thread of its own write a line to stdout while the task waits for it
 * without a system call (spinning on a flag), "print:child" has a forked
 * child write one; anything else ("ok") is echoed.  For supervision
 * tests: "escape:MARK" double-forks and setsid()s a `sleep` whose argv[0]
 * is MARK; "setsid:MARK" leaves a direct child in its own session;
 * "bg:MARK" a direct child in the worker's group; "leak:N" keeps N MiB
 * touched; "spew:N" writes N bytes to stdout without a newline; "uring"
 * (whether an io_uring is mapped), "fds", "cwd", "id", "pid", "env:NAME"
 * and "rlimit:NAME" report what the worker process has.  For --bench:
 * "burnslow:MS" spins for MS ms of the thread's CPU time, three times as
 * long in a worker process (JOBRUND_WORKER set), as if the CPUs ran at a
 * third of their speed in process mode.  For the fault
 * catalogue: "forkbomb" forks until fork fails, every child forking too,
 * then reports how many children the worker made and why it stopped (the
 * children wait to be killed); it refuses to start unless RLIMIT_NPROC
 * binds it (a uid other than root, a limit of at most 256).  "fdleak:N"
 * opens N descriptors it never closes and reports how many the worker
 * has, or fails when it runs out.  For the worker's shared block
 * (struct proto_shm, found through /proc/self/maps), wild writes as a
 * buggy plugin might make: "scribble:limit" lowers the claim word's
 * limit to its next (the worker drops what it holds), "scribble:skip"
 * raises next to limit (the same, with a consistent word),
 * "scribble:gen" leaves run_gen odd and hangs; "scribble:hide" clears
 * run_seq (as if between tasks) until jobrund moves the claim word's
 * next (a grant past ids it took back), then puts it back and hangs
 * (SIGTERM ends it).  Not thread-safe: it is meant for process mode.
 *
 * Two settings: `die_idle_ms`, and a worker (not the daemon, which runs
 * init only to check settings) dies of SIGSEGV that long after its init,
 * task or not: a plugin whose own thread crashes; `init_burn_ms`, and
 * init spins that long (CPU that is not any task's, for --bench).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobrund/plugin.h"

/* Start `sleep 3600` named MARK; SESSION: in a new session; ESCAPE: as a
 * grandchild whose parent exits at once (a daemon's double fork). */
static void
start_sleeper(const char *mark, bool session, bool escape)
{
	pid_t pid = fork();

	if (pid == 0) {
		if (session)
			setsid();
		if (escape && fork() != 0)
			_exit(0);
		execl("/bin/sleep", mark, "3600", (char *)NULL);
		_exit(127);
	}
	if (pid > 0 && escape)
		waitpid(pid, NULL, 0);
}

static int
report(const struct jr_host *host, jr_task *task, const char *what)
{
	char buf[8192];
	size_t len = 0;

	if (strcmp(what, "fds") == 0) {
		DIR *d = opendir("/proc/self/fd");
		struct dirent *de;
		int self = d ? dirfd(d) : -1;

		while (d && (de = readdir(d)) != NULL) {
			char link[300], target[1024];
			ssize_t n;

			if (de->d_name[0] == '.' || atoi(de->d_name) == self)
				continue;
			snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
			n = readlink(link, target, sizeof target - 1);
			target[n > 0 ? n : 0] = '\0';
			len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s=%s",
						len ? "\n" : "", de->d_name, target);
		}
		if (d)
			closedir(d);
	} else if (strcmp(what, "uring") == 0) {
		FILE *fp = fopen("/proc/self/maps", "re");
		char line[512];
		bool mapped = false;

		while (fp && fgets(line, sizeof line, fp) != NULL)
			mapped |= strstr(line, "[io_uring]") != NULL;
		if (fp)
			fclose(fp);
		snprintf(buf, sizeof buf, "%s", mapped ? "yes" : "no");
	} else if (strcmp(what, "cwd") == 0) {
		if (getcwd(buf, sizeof buf) == NULL)
			snprintf(buf, sizeof buf, "?");
	} else if (strcmp(what, "id") == 0) {
		snprintf(buf, sizeof buf, "%u %u", (unsigned)getuid(), (unsigned)getgid());
	} else if (strcmp(what, "pid") == 0) {
		snprintf(buf, sizeof buf, "%d", (int)getpid());
	} else if (strncmp(what, "env:", 4) == 0) {
		const char *v = getenv(what + 4);
		snprintf(buf, sizeof buf, "%s", v ? v : "(unset)");
	} else if (strncmp(what, "rlimit:", 7) == 0) {
		static const struct { const char *name; int res; } lims[] = {
			{ "as", RLIMIT_AS }, { "cpu", RLIMIT_CPU },
			{ "nofile", RLIMIT_NOFILE }, { "nproc", RLIMIT_NPROC },
			{ "core", RLIMIT_CORE },
		};
		struct rlimit rl;
		size_t i;

		for (i = 0; i < sizeof lims / sizeof lims[0]; i++)
			if (strcmp(what + 7, lims[i].name) == 0)
				break;
		if (i == sizeof lims / sizeof lims[0] || getrlimit(lims[i].res, &rl) == -1) {
			host->task_error(task, "no limit %s", what + 7);
			return EINVAL;
		}
		if (rl.rlim_cur == RLIM_INFINITY)
			snprintf(buf, sizeof buf, "unlimited");
		else
			snprintf(buf, sizeof buf, "%llu", (unsigned long long)rl.rlim_cur);
	} else {
		return -1;
	}
	return host->task_output(task, buf, strlen(buf)) == 0 ? 0 : EFBIG;
}

/* Descriptors this process has open. */
static int
count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	while (d && (de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	if (d)
		closedir(d);
	return n - 1;           /* not the directory's own */
}

/* A fork bomb that RLIMIT_NPROC stops: see the top of the file. */
static int
fork_bomb(const struct jr_host *host, jr_task *task)
{
	pid_t self = getpid();
	struct rlimit rl;
	char msg[128];
	int made = 0, err;

	if (getuid() == 0 || getrlimit(RLIMIT_NPROC, &rl) == -1 ||
	    rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 256) {
		host->task_error(task, "forkbomb: refused without a binding "
				 "RLIMIT_NPROC (not root, at most 256)");
		return EPERM;
	}
	for (;;) {
		pid_t pid = fork();

		if (pid == 0) {
			made = 0;       /* a child bombs on */
			continue;
		}
		if (pid < 0)
			break;
		made++;
	}
	err = errno;
	if (getpid() != self)
		for (;;)
			pause();
	snprintf(msg, sizeof msg, "%d children, then fork: %s", made, strerror(err));
	return host->task_output(task, msg, strlen(msg)) == 0 ? 0 : EFBIG;
}

/* The worker's shared block: its words claim, run_gen, run_seq,
 * run_start (see jobrund.h); NULL when it cannot be found. */
static uint64_t *
shared_block(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[512];
	unsigned long lo = 0;

	while (f && fgets(line, sizeof line, f))
		if (strstr(line, "memfd:jobrund-worker")) {
			sscanf(line, "%lx", &lo);
			break;
		}
	if (f)
		fclose(f);
	return (uint64_t *)lo;
}

static void
set_seq(uint64_t *b, uint64_t seq, uint64_t start)
{
	uint64_t gen = __atomic_load_n(&b[1], __ATOMIC_RELAXED) | 1;

	__atomic_store_n(&b[1], gen, __ATOMIC_SEQ_CST);
	__atomic_store_n(&b[2], seq, __ATOMIC_SEQ_CST);
	__atomic_store_n(&b[3], start, __ATOMIC_SEQ_CST);
	__atomic_store_n(&b[1], gen + 1, __ATOMIC_SEQ_CST);
}

static void *
print_from_thread(void *arg)
{
	atomic_bool *done = arg;

	printf("noise from a plugin thread\n");
	fflush(stdout);
	atomic_store(done, true);
	return NULL;
}

/* Print from a thread or a child of the worker, not the task's thread:
 * what the worker sees of that write must still be this task's. */
static int
print_elsewhere(const struct jr_host *host, jr_task *task, const char *who)
{
	if (strcmp(who, "thread") == 0) {
		atomic_bool done = false;
		pthread_t t;
		int rc = pthread_create(&t, NULL, print_from_thread, &done);

		if (rc != 0) {
			host->task_error(task, "pthread_create: %s", strerror(rc));
			return rc;
		}
		while (!atomic_load(&done))
			;
		pthread_detach(t);
		return 0;
	}
	if (strcmp(who, "child") == 0) {
		pid_t pid = fork();

		if (pid == -1) {
			int err = errno;
			host->task_error(task, "fork: %s", strerror(err));
			return err;
		}
		if (pid == 0) {
			static const char line[] = "noise from a plugin's child\n";
			_exit(write(1, line, sizeof line - 1) == sizeof line - 1 ? 0 : 1);
		}
		waitpid(pid, NULL, 0);
		return 0;
	}
	host->task_error(task, "print:%s: thread or child", who);
	return EINVAL;
}

static int
scribble(const struct jr_host *host, jr_task *task, const char *how)
{
	uint64_t *b = shared_block(), w;

	if (b == NULL) {
		host->task_error(task, "no shared block");
		return ENOENT;
	}
	if (strcmp(how, "limit") == 0) {
		w = __atomic_load_n(&b[0], __ATOMIC_SEQ_CST);
		__atomic_store_n(&b[0], w << 32 | (uint32_t)w, __ATOMIC_SEQ_CST);
	} else if (strcmp(how, "skip") == 0) {
		w = __atomic_load_n(&b[0], __ATOMIC_SEQ_CST);
		__atomic_store_n(&b[0], (w & 0xffffffff00000000ull) | w >> 32,
				 __ATOMIC_SEQ_CST);
	} else if (strcmp(how, "gen") == 0) {
		__atomic_fetch_or(&b[1], 1, __ATOMIC_SEQ_CST);
		for (;;)
			pause();
	} else if (strcmp(how, "hide") == 0) {
		uint64_t seq = __atomic_load_n(&b[2], __ATOMIC_SEQ_CST);
		uint64_t start = __atomic_load_n(&b[3], __ATOMIC_SEQ_CST);
		uint32_t before = (uint32_t)__atomic_load_n(&b[0], __ATOMIC_SEQ_CST);

		set_seq(b, 0, 0);
		/* At most a minute: then give up hiding. */
		for (int i = 0; i < 60000; i++) {
			if ((uint32_t)__atomic_load_n(&b[0], __ATOMIC_SEQ_CST) != before)
				break;
			usleep(1000);
		}
		set_seq(b, seq, start);
		for (;;)
			pause();
	}
	return host->task_output(task, how, strlen(how)) == 0 ? 0 : EFBIG;
}

/* Spin until the calling thread has used MS ms of CPU. */
static void
burn_ms(long ms)
{
	struct timespec ts;
	double until;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	until = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + (double)ms / 1e3;
	do
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	while ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9 < until);
}

static int
crash_run(const struct jr_host *host, void *state, jr_task *task)
{
	const char *in = host->task_input(task);

	if (in == NULL)
		in = "ok";
	if (strcmp(in, "segv") == 0) {
		volatile int *volatile p = NULL;

		*p = 1;
	} else if (strcmp(in, "abort") == 0) {
		abort();
	} else if (strcmp(in, "exit3") == 0) {
		_exit(3);
	} else if (strcmp(in, "hang") == 0) {
		signal(SIGTERM, SIG_IGN);
		for (;;)
			pause();
	} else if (strncmp(in, "escape:", 7) == 0) {
		start_sleeper(in + 7, true, true);
	} else if (strncmp(in, "setsid:", 7) == 0) {
		start_sleeper(in + 7, true, false);
	} else if (strncmp(in, "bg:", 3) == 0) {
		start_sleeper(in + 3, false, false);
	} else if (strncmp(in, "leak:", 5) == 0) {
		size_t n = (size_t)atol(in + 5) << 20;
		char *p = malloc(n);

		if (p == NULL) {
			host->task_error(task, "cannot allocate %s MiB", in + 5);
			return ENOMEM;
		}
		memset(p, 1, n);        /* touched, so it counts in RSS; leaked */
	} else if (strncmp(in, "spew:", 5) == 0) {
		long n = atol(in + 5);
		char chunk[4096];

		memset(chunk, 'x', sizeof chunk);
		for (long done = 0; done < n; ) {
			size_t k = (size_t)(n - done) < sizeof chunk ?
				   (size_t)(n - done) : sizeof chunk;
			ssize_t w = write(1, chunk, k);
			if (w <= 0)
				break;
			done += w;
		}
		return host->task_output(task, "spewed", 6) == 0 ? 0 : EFBIG;
	} else if (strncmp(in, "print:", 6) == 0) {
		return print_elsewhere(host, task, in + 6);
	} else if (strcmp(in, "print") == 0) {
		printf("noise from the plugin on stdout\n");
		fflush(stdout);
		fprintf(stderr, "noise from the plugin on stderr\n");
	} else if (strncmp(in, "scribble:", 9) == 0) {
		return scribble(host, task, in + 9);
	} else if (strcmp(in, "forkbomb") == 0) {
		return fork_bomb(host, task);
	} else if (strncmp(in, "fdleak:", 7) == 0) {
		char msg[32];

		for (int i = atoi(in + 7); i > 0; i--) {
			if (open("/dev/null", O_RDONLY) == -1) {
				int err = errno;

				host->task_error(task, "open: %s", strerror(err));
				return err;
			}
		}
		snprintf(msg, sizeof msg, "%d", count_fds());
		return host->task_output(task, msg, strlen(msg)) == 0 ? 0 : EFBIG;
	} else if (strncmp(in, "burnslow:", 9) == 0) {
		burn_ms(atol(in + 9) * (getenv("JOBRUND_WORKER") ? 3 : 1));
	} else if (strcmp(in, "spin") == 0) {
		volatile unsigned long n = 0;

		for (;;)
			n++;
	}
	{
		int rc = report(host, task, in);
		if (rc >= 0)
			return rc;
	}
	return host->task_output(task, in, strlen(in)) == 0 ? 0 : EFBIG;
}

static void *
die_later(void *arg)
{
	usleep((useconds_t)(uintptr_t)arg * 1000);
	raise(SIGSEGV);
	return NULL;
}

static int
crash_init(const struct jr_host *host, jr_job *job, void **state)
{
	const char *const *keys = host->setting_keys(job);
	int64_t ms = 0, burn = 0;
	pthread_t th;

	(void)state;
	for (size_t i = 0; keys != NULL && keys[i] != NULL; i++)
		if (strcmp(keys[i], "die_idle_ms") != 0 &&
		    strcmp(keys[i], "init_burn_ms") != 0) {
			host->setting_error(job, keys[i], "unknown setting '%s' "
					    "(only die_idle_ms, init_burn_ms)", keys[i]);
			return EINVAL;
		}
	if (host->setting_int(job, "die_idle_ms", &ms) == EINVAL ||
	    host->setting_int(job, "init_burn_ms", &burn) == EINVAL)
		return EINVAL;          /* the host has said why */
	if (burn > 0)
		burn_ms((long)burn);
	if (ms < 0) {
		host->setting_error(job, "die_idle_ms", "settings.die_idle_ms is "
				    "%lld: expected milliseconds, 0 or more", (long long)ms);
		return EINVAL;
	}
	if (ms > 0 && getenv("JOBRUND_WORKER") != NULL) {
		if (pthread_create(&th, NULL, die_later, (void *)(uintptr_t)ms) != 0)
			return EAGAIN;
		pthread_detach(th);
	}
	return 0;
}

JR_PLUGIN_DEFINE(
	.name = "crash",
	.version = "1.0",
	.description = "crashes, exits, hangs or spins on request",
	.init = crash_init,
	.run = crash_run,
);
