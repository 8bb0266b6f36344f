/*
 * worker_factory.c - jobrund-worker as the worker factory: one process,
 * started by the daemon once, that forks process-mode workers on request.
 *
 * Starting a worker with posix_spawn costs an exec and the dynamic
 * linking of jobrund-worker, over a millisecond, paid by every worker and
 * on the daemon's main thread.  The daemon cannot simply fork (it has
 * threads); this process can: it is single-threaded and has done its
 * exec and linking once, so a fork of it is a worker that has only its
 * plugin left to load.  The daemon side is factory.c.
 *
 * The factory reads SPAWN requests from fd 3 (a SOCK_SEQPACKET socket),
 * each with the new worker's three descriptors attached (its socketpair
 * end, its output pipe, the shared memory block), forks the worker with
 * clone3(CLONE_PARENT) -- so that it is born the daemon's child, and the
 * daemon supervises it exactly as one it spawned: waitid on its pidfd,
 * its death signal, its escaped children -- and answers SPAWNED with its
 * pid and a pidfd for it.  glibc has no fork with CLONE_PARENT, so the
 * child does itself what glibc's fork does in a child: its thread id in
 * glibc's thread descriptor (CLONE_CHILD_SETTID, at the address the
 * kernel holds for the factory, PR_GET_TID_ADDRESS) and its robust mutex
 * list (set_robust_list).  There is nothing more to reset: the factory
 * is single-threaded, holds no lock when it forks and has no fork
 * handlers, since it never loads a plugin.  Where one of the calls it
 * needs is missing (a kernel without clone3, close_range or
 * CONFIG_CHECKPOINT_RESTORE; a seccomp filter) the factory says so
 * instead of READY, and the daemon execs its workers.
 *
 * Its memory is every later worker's: it holds none of the daemon's
 * environment but the exec-time variables (factory.c), wipes each request
 * once it has forked, and never logs (syslog would read the time zone
 * once, here, for every worker).
 *
 * The worker then makes itself what posix_spawn would have made: its own
 * process group; fds 0-4 as sup.c documents (fd 0 is the factory's
 * /dev/null); the environment the daemon sent; "jobrund-worker: JOB" in
 * /proc/PID/cmdline, where `ps` and `pkill -f` look; and its JOBRUND_JOB
 * and JOBRUND_WORKER tags in /proc/PID/environ, where reaper.c looks for
 * them in the worker's forked children.  The last two are written over
 * the factory's own argument and environment strings, which the daemon
 * started it with room in.  Then it returns to main() as if just exec'd.
 *
 * The factory dies with the daemon (PR_SET_PDEATHSIG, and EOF on fd 3)
 * and owns nothing but itself: if it dies, the daemon starts workers
 * with posix_spawn until it has started a new one.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "jobrund.h"

#define FACTORY_FD 3

/* What a child of clone3 must set as glibc's fork would. */
static pid_t *tid_address;
static void *robust_head;
static size_t robust_len;
/* The factory's argument strings (one block), and the values of its
 * JOBRUND_JOB and JOBRUND_WORKER variables: room a worker writes its
 * title and tags into. */
static char *args_start;
static size_t args_room;
static char *tag_job, *tag_worker;
static size_t tag_job_room, tag_worker_room;

/* Write TEXT over the argument block, NUL-padded; the block's last byte
 * is left non-zero, which tells the kernel the title was rewritten, so
 * /proc/PID/cmdline ends at the first NUL. */
static void
set_title(const char *text)
{
	size_t n;

	if (args_room < 2)
		return;
	n = strlen(text);
	if (n > args_room - 2)
		n = args_room - 2;
	memcpy(args_start, text, n);
	memset(args_start + n, '\0', args_room - n - 1);
	args_start[args_room - 1] = ' ';
}

/* Write VALUE into a tag's room, NUL-padded (a reader of
 * /proc/PID/environ sees the variable, then empty strings). */
static void
set_tag(char *room, size_t size, const char *value)
{
	size_t n;

	if (room == NULL)
		return;
	n = strnlen(value, size);
	memcpy(room, value, n);
	memset(room + n, '\0', size - n);
}

/* Note where the argument block and the tags are, as exec left them. */
static void
find_rooms(int argc, char **argv)
{
	char *end = argv[0];

	for (int i = 0; i < argc; i++) {
		if (argv[i] != end) {
			args_start = NULL;      /* not one block: leave it */
			args_room = 0;
			break;
		}
		args_start = argv[0];
		end = argv[i] + strlen(argv[i]) + 1;
		args_room = (size_t)(end - argv[0]);
	}
	for (char **e = environ; *e; e++) {
		if (strncmp(*e, "JOBRUND_JOB=", 12) == 0) {
			tag_job = *e + 12;
			tag_job_room = strlen(tag_job);
		} else if (strncmp(*e, "JOBRUND_WORKER=", 15) == 0) {
			tag_worker = *e + 15;
			tag_worker_room = strlen(tag_worker);
		}
	}
}

static void
send_frame(struct pbuf *b, int fd_to_pass)
{
	/* The daemon gone, nobody is left to tell. */
	(void)send_with_fds(FACTORY_FD, b->data, b->len, &fd_to_pass, fd_to_pass != -1, 0);
	b->len = 0;
}

static void
answer(uint64_t seq, pid_t pid, int error, int pidfd)
{
	struct pbuf b = { 0 };
	struct msg_spawned m = { .seq = seq, .pid = (int32_t)pid, .error = error };

	proto_put_spawned(&b, &m);
	send_frame(&b, pidfd);
	pbuf_free(&b);
}

/* In the new worker: become what sup.c spawns. */
static void
become_worker(const struct msg_spawn *rq, const int fds[3])
{
	char title[JOB_NAME_MAX + 32];
	int sock, out, mem;

	syscall(SYS_set_robust_list, robust_head, robust_len);
	setpgid(0, 0);
	/* Out of the way of 1-4 first: they may be where fds[] landed. */
	sock = fcntl(fds[0], F_DUPFD, 10);
	out = fcntl(fds[1], F_DUPFD, 10);
	mem = fcntl(fds[2], F_DUPFD, 10);
	if (sock == -1 || out == -1 || mem == -1 || dup2(out, 1) == -1 ||
	    dup2(out, 2) == -1 || dup2(sock, 3) == -1 || dup2(mem, 4) == -1)
		_exit(127);
	/* Nothing but 0-4 (the factory checked that close_range works). */
	close_range(5, ~0U, 0);

	environ = (char **)(uintptr_t)rq->env;
	snprintf(title, sizeof title, "jobrund-worker: %s", rq->job);
	set_title(title);
	set_tag(tag_job, tag_job_room, rq->job);
	set_tag(tag_worker, tag_worker_room, "");
	for (const char **e = rq->env; *e; e++)
		if (strncmp(*e, "JOBRUND_WORKER=", 15) == 0)
			set_tag(tag_worker, tag_worker_room, *e + 15);
}

/* Zero and free a request: see the caller. */
static void
wipe_request(struct msg_spawn *rq)
{
	for (const char **e = rq->env; e && *e; e++)
		explicit_bzero((char *)(uintptr_t)*e, strlen(*e));
	if (rq->job)
		explicit_bzero((char *)(uintptr_t)rq->job, strlen(rq->job));
	proto_spawn_free(rq);
}

/* Fork a worker as the daemon's child: 0 in it, its pid (and *PIDFD) in
 * the factory, -1 with errno. */
static pid_t
fork_for_daemon(int *pidfd)
{
	struct clone_args ca = {
		.flags = CLONE_PARENT | CLONE_PIDFD | CLONE_CHILD_SETTID |
			 CLONE_CHILD_CLEARTID,
		.pidfd = (uint64_t)(uintptr_t)pidfd,
		.child_tid = (uint64_t)(uintptr_t)tid_address,
		/* 0: with CLONE_PARENT the child takes the factory's, SIGCHLD. */
	};

	return (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
}

/* Can this process fork as glibc would, with CLONE_PARENT?  NULL, or
 * why not. */
static const char *
can_fork_for_daemon(void)
{
	static char why[160];
	long len;

	if (prctl(PR_GET_TID_ADDRESS, &tid_address) == -1 || tid_address == NULL) {
		snprintf(why, sizeof why, "prctl(PR_GET_TID_ADDRESS): %s",
			 strerror(errno));
		return why;
	}
	if (syscall(SYS_get_robust_list, 0, &robust_head, &len) == -1) {
		snprintf(why, sizeof why, "get_robust_list: %s", strerror(errno));
		return why;
	}
	/* A worker closes what it must not hold with it (Linux 5.9), and so
	 * do we, now: whatever the daemon leaked to us would outlive it in
	 * every worker. */
	if (close_range(FACTORY_FD + 1, ~0U, 0) == -1) {
		snprintf(why, sizeof why, "close_range: %s", strerror(errno));
		return why;
	}
	robust_len = (size_t)len;
	/* clone3 itself, with an invalid size: EINVAL where it exists,
	 * ENOSYS (or a seccomp filter's EPERM) where it does not. */
	if (syscall(SYS_clone3, NULL, 0) == -1 && errno != EINVAL) {
		snprintf(why, sizeof why, "clone3: %s", strerror(errno));
		return why;
	}
	return NULL;
}

/* Receive one request and its descriptors; false at EOF. */
static bool
receive(uint8_t *buf, size_t size, size_t *len, int fds[3], size_t *nfds)
{
	int flags;
	ssize_t n = recv_with_fds(FACTORY_FD, buf, size, fds, 3, nfds, &flags);

	if (n <= 0)
		return false;
	*len = (flags & (MSG_TRUNC | MSG_CTRUNC)) ? 0 : (size_t)n;
	return true;
}

/*
 * Serve requests until the daemon goes.  Returns only in a new worker,
 * set up as main() expects; the factory itself exits.
 */
void
factory_main(int argc, char **argv)
{
	static uint8_t buf[FACTORY_MAX_REQUEST];
	struct pbuf b = { 0 };
	pid_t daemon_pid = getppid();
	const char *cannot;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != daemon_pid)
		_exit(0);       /* the daemon died before the line above */
	find_rooms(argc, argv);
	set_title("jobrund: worker factory");
	set_tag(tag_job, tag_job_room, "");
	set_tag(tag_worker, tag_worker_room, "");
	if ((cannot = can_fork_for_daemon()) != NULL) {
		struct msg_fail fail = { cannot };

		proto_put_fail(&b, &fail);
		send_frame(&b, -1);
		_exit(1);
	} else {
		struct msg_ready ready = { PROTO_VERSION, (int32_t)getpid() };

		proto_put_ready(&b, &ready);
		send_frame(&b, -1);
	}
	pbuf_free(&b);

	for (;;) {
		struct msg_spawn rq;
		const uint8_t *payload;
		size_t len, off = 0, plen;
		uint8_t type;
		int fds[3], pidfd = -1;
		size_t nfds;
		pid_t pid;

		if (!receive(buf, sizeof buf, &len, fds, &nfds))
			_exit(0);
		if (proto_next_frame(buf, len, &off, &type, &payload, &plen) != 1 ||
		    off != len || type != MSG_SPAWN ||
		    proto_get_spawn(payload, plen, &rq) == -1) {
			/* Not from our daemon, which sends only SPAWN frames
			 * that fit: nothing to answer, nothing to keep (not
			 * even a log line: syslog would fix the time zone of
			 * every worker forked later). */
			explicit_bzero(buf, sizeof buf);
			for (size_t i = 0; i < nfds; i++)
				close(fds[i]);
			continue;
		}
		/* The request may hold a job's secrets (its env): no later
		 * worker, of another job, may find them in our memory. */
		explicit_bzero(buf, len);
		if (nfds != 3) {
			answer(rq.seq, 0, EBADF, -1);
		} else if ((pid = fork_for_daemon(&pidfd)) == 0) {
			become_worker(&rq, fds);
			return;
		} else if (pid == -1) {
			answer(rq.seq, 0, errno, -1);
		} else {
			answer(rq.seq, pid, 0, pidfd);
			close(pidfd);
		}
		for (size_t i = 0; i < nfds; i++)
			close(fds[i]);
		wipe_request(&rq);
	}
}
