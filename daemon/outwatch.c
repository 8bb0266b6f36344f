/*
 * outwatch.c - jobrund-worker's watch on its own stdout/stderr pipe: did
 * the task that just ran write anything there?
 *
 * The daemon keeps what a task writes with that task (sup.c), so after
 * each task the worker must know whether the pipe saw bytes while it ran.
 * Asking the kernel each time (FIONREAD) is a system call per task, and
 * on short tasks that call was 30-40 % of a worker's time (perf; 241 ns a
 * call on the machine of README's Performance table).
 *
 * So the worker keeps one poll request armed on the pipe in an io_uring
 * of its own.  A write to the pipe, from any thread of the worker or any
 * child it started, wakes the request inside that write(2), and the wake-up
 * sets the ring's IORING_SQ_TASKRUN flag (IORING_SETUP_TASKRUN_FLAG), in
 * memory the ring shares with us, before the write returns.  Checking
 * after a task is two loads, and exact as FIONREAD is: whatever the task
 * wrote before its run returned has been seen.  It is also exact where
 * FIONREAD needed help: the daemon reading the bytes out meanwhile does
 * not undo the wake-up.
 *
 * The ring defers its completions to us (IORING_SETUP_DEFER_TASKRUN,
 * which needs IORING_SETUP_SINGLE_ISSUER: only the worker's main thread
 * touches the ring): the wake-up never interrupts the plugin (with task
 * work run at the next return to user space, a plugin thread's or
 * child's write would make the main thread's epoll_wait fail with EINTR),
 * and the flag is the ring's alone, not shared with a ring the plugin may
 * have of its own.  Once the request has fired, outwatch_arm has its
 * completion posted, reaps it and arms a new one: two system calls, only
 * after a task that wrote, which costs a round trip to the daemon anyway
 * (worker.c).
 *
 * The plugin sees nothing open but fds 0-3 (README, supervision), so the
 * ring keeps no descriptor of ours open: the read end of the pipe (the
 * pipe reopened through /proc/self/fd/1, before the worker takes on a
 * job's user, to whom the daemon's pipe is closed) is a registered file of
 * the ring, and the ring is entered through its registered index
 * (IORING_REGISTER_RING_FDS); both descriptors are closed.  The ring's
 * memory is not inherited by fork (io_uring_ring_dontfork): a child that
 * outlived the worker would otherwise keep the pipe's read end alive, and
 * its writes would block when the daemon has gone instead of failing.
 *
 * Where io_uring cannot be used so (Linux before 6.1, a kernel built
 * without it or kernel.io_uring_disabled, a seccomp filter such as a
 * container's, /proc not mounted), when the ring fails later (logged
 * through the daemon: the worker keeps no syslog socket open), or
 * when JOBRUND_WORKER_FIONREAD is set (not empty) in the worker's
 * environment (the tests run both ways), each check is a FIONREAD:
 * slower, exact as well.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <liburing.h>

#include "jobrund.h"

/* While ring_ok, one poll request is in the ring: armed, or fired and
 * not yet reaped. */
static struct {
	bool ring_ok;                   /* else: FIONREAD */
	const char *job;                /* for the log */
	void (*log)(int priority, const char *job, const char *text);
	struct io_uring ring;
} ow;

/* Reopen the pipe on fd 1 for reading, as the ring's fixed file 0. */
static int
register_pipe(void)
{
	struct stat st;
	int fd, rc;

	if (fstat(STDOUT_FILENO, &st) == -1 || !S_ISFIFO(st.st_mode))
		return -1;
	/* A pipe reopened read-only through /proc is its read end; never
	 * read here, only polled. */
	fd = open("/proc/self/fd/1", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1)
		return -1;
	rc = io_uring_register_files(&ow.ring, &fd, 1);
	close(fd);
	return rc < 0 ? -1 : 0;
}

/*
 * Close the ring's own descriptor: it is entered by its registered index
 * from now on.  By hand, not with liburing 2.4's io_uring_close_ring_fd,
 * which refuses before Linux 6.3 although what we do after works there:
 * submitting, getting events and peeking at completions, all through the
 * index.  No io_uring_register*() or io_uring_queue_exit() may follow.
 */
static int
close_ring_fd(void)
{
	if (io_uring_register_ring_fd(&ow.ring) != 1)
		return -1;
	close(ow.ring.ring_fd);
	ow.ring.ring_fd = -1;
	return 0;
}

/* The armed request has fired: its completion is posted, or will be at
 * the next io_uring_get_events. */
static bool
request_fired(void)
{
	unsigned flags = __atomic_load_n(ow.ring.sq.kflags, __ATOMIC_ACQUIRE);

	return io_uring_cq_ready(&ow.ring) > 0 || (flags & IORING_SQ_TASKRUN);
}

/* The ring failed (ERR: a negative errno): FIONREAD from now on.  The
 * ring stays mapped, and with its registered pipe lives until the worker
 * exits: with its descriptor closed, nothing can tear it down. */
static void
give_up_ring(int err)
{
	char text[256];

	snprintf(text, sizeof text, "worker %d: watching its output pipe "
		 "through io_uring failed (%s): a FIONREAD per task from now on",
		 (int)getpid(), strerror(-err));
	if (ow.log != NULL)
		ow.log(LOG_NOTICE, ow.job, text);
	ow.ring_ok = false;
}

/* Arm a new poll request on the pipe. */
static void
submit_request(void)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ow.ring);
	int rc;

	if (sqe == NULL) {
		give_up_ring(-EBUSY);
		return;
	}
	io_uring_prep_poll_add(sqe, 0, POLLIN);
	sqe->flags |= IOSQE_FIXED_FILE;
	if ((rc = io_uring_submit(&ow.ring)) != 1)
		give_up_ring(rc < 0 ? rc : -EIO);
}

bool
outwatch_start(const char *job,
	       void (*log)(int priority, const char *job, const char *text))
{
	struct io_uring_params params = {
		.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			 IORING_SETUP_TASKRUN_FLAG,
	};
	const char *forced = getenv("JOBRUND_WORKER_FIONREAD");

	ow.job = job;
	ow.log = log;
	if (forced != NULL && *forced != '\0')
		return false;
	if (io_uring_queue_init_params(2, &ow.ring, &params) < 0)
		return false;
	if (io_uring_ring_dontfork(&ow.ring) < 0 || register_pipe() == -1 ||
	    close_ring_fd() == -1) {
		io_uring_queue_exit(&ow.ring);
		return false;
	}
	ow.ring_ok = true;
	submit_request();
	return ow.ring_ok;
}

void
outwatch_arm(void)
{
	struct io_uring_cqe *cqe;
	bool reaped = false;
	int rc;

	if (!ow.ring_ok || !request_fired())
		return;
	/* Have its completion posted, and reap it. */
	if ((rc = io_uring_get_events(&ow.ring)) < 0) {
		give_up_ring(rc);
		return;
	}
	while (io_uring_peek_cqe(&ow.ring, &cqe) == 0) {
		int res = cqe->res;

		io_uring_cqe_seen(&ow.ring, cqe);
		if (res < 0) {
			give_up_ring(res);
			return;
		}
		reaped = true;
	}
	/* Nothing reaped: it was woken with nothing to report, and the
	 * kernel keeps it armed. */
	if (reaped)
		submit_request();
}

bool
outwatch_wrote(void)
{
	int avail = 0;

	if (ow.ring_ok)
		return request_fired();
	return ioctl(STDOUT_FILENO, FIONREAD, &avail) == -1 || avail > 0;
}
