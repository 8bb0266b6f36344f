/*
 * outwatch.c - jobrund-worker's watch on its own stdout/stderr pipe: did
 * the task that just ran write anything there?
 *
 * The daemon keeps what a task writes with that task (sup.c), so after
 * each task the worker must know whether the pipe saw bytes while it ran.
 * Asking the kernel each time (FIONREAD) is a system call per task, and
 * on short tasks that call was a third of a worker's time.
 *
 * So the worker keeps one poll request armed on the pipe in an io_uring
 * of its own.  A write to the pipe, from any thread of the worker or any
 * child it started, wakes the request inside that write(2), and the
 * wake-up shows in the memory the ring shares with us before the write
 * returns: the request's completion, or, until the completion is posted
 * (it is posted when the worker next enters the kernel), the ring's
 * IORING_SQ_TASKRUN flag (IORING_SETUP_TASKRUN_FLAG).  Checking after a
 * task is two loads, and exact as FIONREAD is: whatever the task wrote
 * before its run returned has been seen.  It is also exact where FIONREAD
 * needed help: the daemon reading the bytes out in the meantime does not
 * undo a completion.
 *
 * Once the request has fired, outwatch_arm reaps it and arms a new one:
 * one system call, only after a task that wrote, which costs a round
 * trip to the daemon anyway (worker.c).
 *
 * The plugin must see nothing open but fds 0-3 (README, supervision), so
 * the ring keeps no descriptor of ours open: the read end of the pipe
 * (the pipe reopened through /proc/self/fd/1) is a registered file of the
 * ring, and the ring itself is entered through its registered index
 * (IORING_REGISTER_RING_FDS); both descriptors are closed.
 *
 * Where io_uring cannot be used (an old kernel, kernel.io_uring_disabled,
 * a seccomp filter such as a container's, /proc not mounted), or when
 * JOBRUND_WORKER_FIONREAD is set in the environment (the tests run both
 * ways), each check is a FIONREAD: slower, exact as well.
 */
#include "config.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <liburing.h>

#include "jobrund.h"

static struct {
	bool ring_ok;                   /* else: FIONREAD */
	bool armed;                     /* a poll request is in the ring */
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

/* Close the ring's own descriptor: it is entered by its registered index
 * from now on. */
static int
close_ring_fd(void)
{
	if (io_uring_register_ring_fd(&ow.ring) != 1)
		return -1;
#ifdef HAVE_IO_URING_CLOSE_RING_FD
	return io_uring_close_ring_fd(&ow.ring) == 1 ? 0 : -1;
#else
	/* What liburing 2.4's io_uring_close_ring_fd does. */
	close(ow.ring.ring_fd);
	ow.ring.ring_fd = -1;
	return 0;
#endif
}

void
outwatch_start(void)
{
	struct io_uring_params params = {
		.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
	};

	if (getenv("JOBRUND_WORKER_FIONREAD") != NULL)
		return;
	/* Without TASKRUN_FLAG (Linux < 5.19) a write by another thread
	 * might not show at once: FIONREAD then. */
	if (io_uring_queue_init_params(2, &ow.ring, &params) < 0)
		return;
	if (register_pipe() == -1 || close_ring_fd() == -1) {
		io_uring_queue_exit(&ow.ring);
		return;
	}
	ow.ring_ok = true;
	outwatch_arm();
}

/* The armed request has fired, or is about to post that it has. */
static bool
request_fired(void)
{
	unsigned flags = __atomic_load_n(ow.ring.sq.kflags, __ATOMIC_ACQUIRE);

	return io_uring_cq_ready(&ow.ring) > 0 || (flags & IORING_SQ_TASKRUN);
}

/* Something went wrong with the ring: FIONREAD from now on. */
static void
give_up_ring(void)
{
	ow.ring_ok = false;
	ow.armed = false;
}

void
outwatch_arm(void)
{
	struct io_uring_cqe *cqe;
	struct io_uring_sqe *sqe;

	if (!ow.ring_ok || (ow.armed && !request_fired()))
		return;
	if (ow.armed) {
		/* Have its completion posted (the flag alone may be up), and
		 * reap it. */
		if (io_uring_get_events(&ow.ring) < 0) {
			give_up_ring();
			return;
		}
		while (io_uring_peek_cqe(&ow.ring, &cqe) == 0) {
			bool failed = cqe->res < 0;

			io_uring_cqe_seen(&ow.ring, cqe);
			ow.armed = false;
			if (failed) {
				give_up_ring();
				return;
			}
		}
		/* Woken, but the kernel found nothing to report and keeps it
		 * armed: still watching. */
		if (ow.armed)
			return;
	}
	sqe = io_uring_get_sqe(&ow.ring);
	if (sqe == NULL) {
		give_up_ring();
		return;
	}
	io_uring_prep_poll_add(sqe, 0, POLLIN);
	sqe->flags |= IOSQE_FIXED_FILE;
	if (io_uring_submit(&ow.ring) != 1) {
		give_up_ring();
		return;
	}
	ow.armed = true;
}

bool
outwatch_wrote(void)
{
	int avail = 0;

	if (ow.ring_ok)
		return !ow.armed || request_fired();
	return ioctl(STDOUT_FILENO, FIONREAD, &avail) == -1 || avail > 0;
}
