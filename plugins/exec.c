/*
 * exec.c - the `exec` plugin: run a command per task.
 *
 *   settings = { command = [ "convert", "-resize", "50%" ]; };
 *
 * settings.command is the argv (a list or array of strings, the program
 * looked up in PATH); the task's input, when the job has inputs, is
 * appended as the last argument.  The command's stdout is the task's
 * output (one trailing newline trimmed); each stderr line is logged, and
 * the last 2 KiB of stderr go into the error message when it fails.
 *
 * The child is started with posix_spawnp (never fork: the daemon has
 * threads), in its own process group so a cancel reaches everything it
 * started, with an empty signal mask and every signal at its default (the
 * daemon blocks signals for its signalfd, and a child must not inherit
 * that), stdin from /dev/null, and only descriptors 0-2.  The plugin then
 * polls the pipes with a short timeout so it sees host->task_cancelled: on
 * cancel it sends SIGTERM to the process group, SIGKILL 2 s later.  It
 * reaps its own child with waitpid(pid) and nothing else: the daemon and
 * the worker own their other children.
 *
 * No mutable state is shared between tasks (the state is the argv, read
 * only), so it is thread-safe, and it works the same inside the daemon and
 * inside a single-threaded jobrund-worker.
 */
#include "config.h"

#include <sys/syscall.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jobrund/plugin.h"

extern char **environ;

#define EXEC_POLL_MS    20      /* how often task_cancelled is asked */
#define EXEC_KILL_S     2.0     /* SIGTERM -> SIGKILL */
#define EXEC_LINGER_S   0.5     /* wait for EOF after the child exited */
#define EXEC_TAIL       2048    /* stderr kept for the error message */
#define EXEC_LINE       1024    /* longest stderr line logged as one */

struct exec_state {
	char **argv;            /* settings.command, copied; NULL-terminated */
	size_t argc;
};

/* One running command. */
struct exec_io {
	const struct jr_host *host;
	jr_task *task;
	const char *prog;       /* argv[0], for messages */
	int pending_nl;         /* a '\n' held back: maybe the last byte */
	int dropping;           /* output over the host's limit */
	char tail[EXEC_TAIL];   /* the last bytes of stderr */
	size_t tail_len;
	char line[EXEC_LINE];   /* the stderr line being read */
	size_t line_len;
};

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
exec_free_state(struct exec_state *st)
{
	if (st == NULL)
		return;
	for (size_t i = 0; i < st->argc; i++)
		free(st->argv[i]);
	free(st->argv);
	free(st);
}

static int
exec_init(const struct jr_host *host, jr_job *job, void **state)
{
	const char *const *keys = host->setting_keys(job);
	const char *const *vals;
	struct exec_state *st;
	size_t count;
	int bad = 0, r;

	for (size_t i = 0; keys != NULL && keys[i] != NULL; i++) {
		if (strcmp(keys[i], "command") != 0) {
			host->setting_error(job, keys[i], "unknown setting "
			    "\"%s\": exec knows only \"command\"", keys[i]);
			bad = 1;
		}
	}

	r = host->setting_strings(job, "command", &vals, &count);
	if (r == ENOENT) {
		host->setting_error(job, "command", "exec needs "
		    "settings.command: the program and its arguments, e.g. "
		    "command = [\"echo\", \"hello\"]");
		return EINVAL;
	}
	if (r != 0)
		return EINVAL;  /* a wrong type: the host has reported it */
	if (count == 0 || vals[0] == NULL || vals[0][0] == '\0') {
		host->setting_error(job, "command", "settings.command is "
		    "%s: expected the program and its arguments, e.g. "
		    "command = [\"echo\", \"hello\"]",
		    count == 0 ? "empty" : "an empty program name");
		return EINVAL;
	}
	if (bad)
		return EINVAL;

	if ((st = calloc(1, sizeof *st)) == NULL ||
	    (st->argv = calloc(count + 1, sizeof *st->argv)) == NULL)
		goto nomem;
	for (; st->argc < count; st->argc++)
		if ((st->argv[st->argc] = strdup(vals[st->argc])) == NULL)
			goto nomem;
	*state = st;
	return 0;

nomem:
	exec_free_state(st);
	return ENOMEM;
}

static void
exec_fini(const struct jr_host *host, void *state)
{
	exec_free_state(state);
}

static int
io_append(struct exec_io *io, const char *buf, size_t n)
{
	if (io->host->task_output(io->task, buf, n) == EFBIG) {
		/* Keep reading so the command does not block; drop. */
		io->dropping = 1;
		io->host->task_log(io->task, JR_LOG_NOTICE, "%s: output over "
		    "the limit: the rest is dropped", io->prog);
		return -1;
	}
	return 0;
}

/* Append to the output, holding back a final '\n' (trimmed at the end). */
static void
io_out(struct exec_io *io, const char *buf, size_t n)
{
	if (n == 0 || io->dropping)
		return;
	if (io->pending_nl) {
		io->pending_nl = 0;
		if (io_append(io, "\n", 1) == -1)
			return;
	}
	if (buf[n - 1] == '\n') {
		io->pending_nl = 1;
		n--;
	}
	if (n > 0)
		io_append(io, buf, n);
}

static void
io_line_flush(struct exec_io *io)
{
	if (io->line_len > 0)
		io->host->task_log(io->task, JR_LOG_INFO, "%s: %.*s", io->prog,
		    (int)io->line_len, io->line);
	io->line_len = 0;
}

/* Keep the stderr tail and log it line by line. */
static void
io_err(struct exec_io *io, const char *buf, size_t n)
{
	if (n >= EXEC_TAIL) {
		memcpy(io->tail, buf + n - EXEC_TAIL, EXEC_TAIL);
		io->tail_len = EXEC_TAIL;
	} else {
		if (io->tail_len + n > EXEC_TAIL) {
			size_t drop = io->tail_len + n - EXEC_TAIL;

			memmove(io->tail, io->tail + drop, io->tail_len - drop);
			io->tail_len -= drop;
		}
		memcpy(io->tail + io->tail_len, buf, n);
		io->tail_len += n;
	}

	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n') {
			io_line_flush(io);
			continue;
		}
		if (io->line_len == sizeof io->line)
			io_line_flush(io);
		io->line[io->line_len++] = buf[i];
	}
}

/* Read what FD has; close it and set it to -1 at EOF or error. */
static void
io_read(struct exec_io *io, int *fd, int is_err)
{
	char buf[16384];
	ssize_t n;

	for (;;) {
		n = read(*fd, buf, sizeof buf);
		if (n > 0) {
			if (is_err)
				io_err(io, buf, (size_t)n);
			else
				io_out(io, buf, (size_t)n);
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		close(*fd);
		*fd = -1;
		return;
	}
}

/* The stderr tail for a message: ": TAIL" without trailing blanks, or "". */
static const char *
io_tail(struct exec_io *io, char *buf, size_t len)
{
	size_t n = io->tail_len, start = 0;

	while (n > 0 && (io->tail[n - 1] == '\n' || io->tail[n - 1] == ' ' ||
	    io->tail[n - 1] == '\t' || io->tail[n - 1] == '\r'))
		n--;
	if (n == 0)
		return "";
	/* A full tail starts mid-line: start it at a line if one fits. */
	if (io->tail_len == EXEC_TAIL) {
		const char *nl = memchr(io->tail, '\n', n);

		if (nl != NULL && (size_t)(nl - io->tail) + 1 < n)
			start = (size_t)(nl - io->tail) + 1;
	}
	snprintf(buf, len, ": %.*s", (int)(n - start), io->tail + start);
	return buf;
}

static void
signal_name(int sig, char *buf, size_t len)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
	const char *abbrev = sigabbrev_np(sig);
#else
	const char *abbrev = NULL;
#endif

	if (abbrev != NULL)
		snprintf(buf, len, "SIG%s", abbrev);
	else
		snprintf(buf, len, "%d", sig);
}

/* Open a pipe whose both ends are close-on-exec (the child gets its end
 * by dup2, which clears the flag) and whose read end does not block. */
static int
exec_pipe(int p[2])
{
	if (pipe2(p, O_CLOEXEC) == -1)
		return errno;
	if (fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK) == -1) {
		int e = errno;

		close(p[0]);
		close(p[1]);
		return e;
	}
	return 0;
}

static int
exec_spawn(const struct exec_state *st, char **argv, int out, int err,
    pid_t *pid)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t set;
	int r;

	if ((r = posix_spawn_file_actions_init(&fa)) != 0)
		return r;
	if ((r = posix_spawnattr_init(&attr)) != 0) {
		posix_spawn_file_actions_destroy(&fa);
		return r;
	}
	r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (r == 0)
		r = posix_spawn_file_actions_adddup2(&fa, out, 1);
	if (r == 0)
		r = posix_spawn_file_actions_adddup2(&fa, err, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
	/* Only 0-2, even if another thread of the daemon just opened a
	 * descriptor without O_CLOEXEC. */
	if (r == 0)
		r = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
	if (r == 0)
		r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
		    POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	if (r == 0)
		r = posix_spawnattr_setpgroup(&attr, 0);
	sigemptyset(&set);
	if (r == 0)
		r = posix_spawnattr_setsigmask(&attr, &set);
	sigfillset(&set);
	if (r == 0)
		r = posix_spawnattr_setsigdefault(&attr, &set);
	if (r == 0)
		r = posix_spawnp(pid, argv[0], &fa, &attr, argv, environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	return r;
}

static int
exec_run(const struct jr_host *host, void *state, jr_task *task)
{
	const struct exec_state *st = state;
	const char *input = host->task_input(task);
	struct exec_io *io = NULL;
	struct pollfd pfd[3];
	char **argv = NULL, *arg = NULL, tail[EXEC_TAIL + 4], sig[32];
	char ebuf[256];
	int outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
	int pidfd = -1, status = 0, reaped = 0, lost = 0, cancelled = 0;
	int killed = 0, ret;
	double start, now, exit_at = 0, term_at = 0;
	pid_t pid;
	nfds_t n;

	if ((io = calloc(1, sizeof *io)) == NULL ||
	    (argv = calloc(st->argc + 2, sizeof *argv)) == NULL ||
	    (input != NULL && (arg = strdup(input)) == NULL)) {
		host->task_error(task, "out of memory");
		ret = ENOMEM;
		goto out;
	}
	io->host = host;
	io->task = task;
	io->prog = st->argv[0];
	memcpy(argv, st->argv, st->argc * sizeof *argv);
	argv[st->argc] = arg;   /* NULL without an input: the terminator */

	if ((ret = exec_pipe(outp)) != 0 || (ret = exec_pipe(errp)) != 0) {
		host->task_error(task, "cannot run '%s': pipe: %s", io->prog,
		    strerror_r(ret, ebuf, sizeof ebuf));
		goto out;
	}
	start = now_s();
	if ((ret = exec_spawn(st, argv, outp[1], errp[1], &pid)) != 0) {
		host->task_error(task, "cannot run '%s': %s", io->prog,
		    strerror_r(ret, ebuf, sizeof ebuf));
		goto out;
	}
	close(outp[1]);
	close(errp[1]);
	outp[1] = errp[1] = -1;
#ifdef SYS_pidfd_open
	/* Readable when the child exits: no polling delay for short
	 * commands.  Without it (Linux < 5.3) the poll timeout does. */
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);   /* always CLOEXEC */
#endif

	for (;;) {
		if (!reaped) {
			pid_t w = waitpid(pid, &status, WNOHANG);

			if (w == pid || (w == -1 && errno == ECHILD)) {
				/* ECHILD: something else in this process
				 * reaped it; it is gone all the same. */
				lost = w == -1;
				reaped = 1;
				exit_at = now_s();
				if (pidfd != -1) {
					close(pidfd);
					pidfd = -1;
				}
			}
		}
		now = now_s();
		if (reaped && outp[0] == -1 && errp[0] == -1)
			break;
		/* On cancel, linger until the SIGKILL has been sent too. */
		if (reaped && now - exit_at > EXEC_LINGER_S &&
		    (!cancelled || (killed && now - term_at > EXEC_KILL_S +
		    EXEC_LINGER_S))) {
			/* Something the command started in the background
			 * still holds its stdout or stderr. */
			host->task_log(task, JR_LOG_NOTICE, "%s exited, but "
			    "something it started still holds its output: "
			    "not waiting for it", io->prog);
			break;
		}
		if (!cancelled && host->task_cancelled(task)) {
			cancelled = 1;
			term_at = now;
			if (!reaped || outp[0] != -1 || errp[0] != -1)
				kill(-pid, SIGTERM);
		}
		if (cancelled && !killed && now - term_at >= EXEC_KILL_S) {
			killed = 1;
			kill(-pid, SIGKILL);
		}

		n = 0;
		if (outp[0] != -1)
			pfd[n++] = (struct pollfd){ .fd = outp[0], .events = POLLIN };
		if (errp[0] != -1)
			pfd[n++] = (struct pollfd){ .fd = errp[0], .events = POLLIN };
		if (pidfd != -1)
			pfd[n++] = (struct pollfd){ .fd = pidfd, .events = POLLIN };
		if (poll(pfd, n, EXEC_POLL_MS) == -1 && errno != EINTR) {
			host->task_log(task, JR_LOG_WARNING, "poll: %s",
			    strerror_r(errno, ebuf, sizeof ebuf));
			usleep(EXEC_POLL_MS * 1000);
		}
		if (outp[0] != -1)
			io_read(io, &outp[0], 0);
		if (errp[0] != -1)
			io_read(io, &errp[0], 1);
	}
	io_line_flush(io);

	if (cancelled) {
		host->task_error(task, "cancelled after %.2fs", now_s() - start);
		ret = ECANCELED;
	} else if (lost) {
		host->task_error(task, "the exit status of '%s' was lost: "
		    "another part of the process reaped it", io->prog);
		ret = ECHILD;
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		ret = 0;
	} else if (WIFEXITED(status)) {
		host->task_error(task, "command exited with status %d%s",
		    WEXITSTATUS(status), io_tail(io, tail, sizeof tail));
		ret = EIO;
	} else {
		signal_name(WTERMSIG(status), sig, sizeof sig);
		host->task_error(task, "command killed by signal %s%s%s", sig,
		    WCOREDUMP(status) ? " (core dumped)" : "",
		    io_tail(io, tail, sizeof tail));
		ret = EIO;
	}

out:
	if (pidfd != -1)
		close(pidfd);
	for (int i = 0; i < 2; i++) {
		if (outp[i] != -1)
			close(outp[i]);
		if (errp[i] != -1)
			close(errp[i]);
	}
	free(arg);
	free(argv);
	free(io);
	return ret;
}

JR_PLUGIN_DEFINE(
	.name = "exec",
	.version = "1.0",
	.description = "run settings.command with the input as last argument",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.init = exec_init,
	.run = exec_run,
	.fini = exec_fini,
);
