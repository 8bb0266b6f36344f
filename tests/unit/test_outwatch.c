/*
 * test_outwatch.c - unit tests for outwatch.c, jobrund-worker's watch on
 * its stdout/stderr pipe: a write by the task's thread, by another thread
 * while the task's thread spins without a system call, or by a child is
 * seen; no write, no false alarm; the watch interrupts nobody (a plugin's
 * epoll_wait), is not fooled by a ring the plugin has of its own, is not
 * inherited by fork, and uses io_uring wherever the kernel allows it.
 *
 * fd 1 is the watched pipe during each test (and the TAP output between
 * them): the setup and teardown of every test swap it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <liburing.h>

#include "jobrund.h"

static int pipe_r = -1, pipe_w = -1;    /* the watched pipe */
static bool watch_uses_ring;            /* outwatch_start said io_uring */
static int tap_out = -1;                /* fd 1 outside the tests */

/* Empty the pipe and watch again, as the worker does after the daemon
 * has taken a task's output. */
static void
drain_and_arm(void)
{
	char buf[4096];

	while (read(pipe_r, buf, sizeof buf) > 0)
		;
	outwatch_arm();
}

static int
pipe_on_fd1(void **state)
{
	(void)state;
	fflush(stdout);
	if (dup2(pipe_w, STDOUT_FILENO) == -1)
		return -1;
	drain_and_arm();
	return 0;
}

static int
tap_on_fd1(void **state)
{
	(void)state;
	return dup2(tap_out, STDOUT_FILENO) == -1 ? -1 : 0;
}

static int
start_watch(void **state)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC) == -1)
		return -1;
	pipe_r = p[0];
	pipe_w = p[1];
	fcntl(pipe_r, F_SETFL, O_NONBLOCK);
	tap_out = dup(STDOUT_FILENO);
	unsetenv("JOBRUND_WORKER_FIONREAD");
	pipe_on_fd1(state);
	watch_uses_ring = outwatch_start("test", NULL);
	return tap_on_fd1(state);
}

static void
test_quiet_task(void **state)
{
	(void)state;
	assert_false(outwatch_wrote());
	/* Nothing to re-arm: still quiet. */
	outwatch_arm();
	assert_false(outwatch_wrote());
}

static void
test_own_write(void **state)
{
	(void)state;
	for (int i = 0; i < 100; i++) {
		assert_int_equal(write(STDOUT_FILENO, "x", 1), 1);
		assert_true(outwatch_wrote());
		drain_and_arm();
		assert_false(outwatch_wrote());
	}
}

static void *
write_then_flag(void *arg)
{
	atomic_bool *done = arg;

	if (write(pipe_w, "t", 1) != 1)
		abort();
	atomic_store(done, true);
	return NULL;
}

/* The task's thread waits by spinning: no system call of its own can have
 * the watch's completion posted before the check. */
static void
test_thread_write_seen_without_syscall(void **state)
{
	int missed = 0;

	(void)state;
	for (int i = 0; i < 200; i++) {
		atomic_bool done = false;
		pthread_t t;

		assert_int_equal(pthread_create(&t, NULL, write_then_flag, &done), 0);
		while (!atomic_load(&done))
			;
		missed += !outwatch_wrote();
		pthread_join(t, NULL);
		drain_and_arm();
	}
	assert_int_equal(missed, 0);
}

static void
test_child_write(void **state)
{
	(void)state;
	for (int i = 0; i < 20; i++) {
		pid_t pid = fork();

		assert_true(pid != -1);
		if (pid == 0)
			_exit(write(STDOUT_FILENO, "c", 1) == 1 ? 0 : 1);
		assert_int_equal(waitpid(pid, NULL, 0), pid);
		assert_true(outwatch_wrote());
		drain_and_arm();
	}
}

/* Whether thread TID sleeps in epoll_wait (its current system call, in
 * /proc). */
static bool
in_epoll_wait(pid_t tid)
{
	char path[64];
	long nr = -1;
	FILE *fp;

	snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
	if ((fp = fopen(path, "re")) == NULL)
		return false;
	if (fscanf(fp, "%ld", &nr) != 1)
		nr = -1;
	fclose(fp);
#ifdef SYS_epoll_wait
	if (nr == SYS_epoll_wait)
		return true;
#endif
	return nr == SYS_epoll_pwait;
}

struct sleeper {
	pid_t tid;                      /* the thread in epoll_wait */
	int wake_fd;                    /* an eventfd in its epoll set */
	bool seen_asleep;
};

/* Once the task's thread sleeps in epoll_wait (or after 2 s), write to
 * the pipe, then wake it through its eventfd. */
static void *
write_while_asleep(void *arg)
{
	struct sleeper *s = arg;
	uint64_t one = 1;

	for (int i = 0; i < 2000 && !s->seen_asleep; i++) {
		s->seen_asleep = in_epoll_wait(s->tid);
		if (!s->seen_asleep)
			usleep(1000);
	}
	if (write(pipe_w, "l", 1) != 1)
		abort();
	usleep(10000);
	if (write(s->wake_fd, &one, sizeof one) != sizeof one)
		abort();
	return NULL;
}

/* A plugin sleeping in epoll_wait while its thread writes to stdout must
 * sleep on until what it waits for comes, not fail with EINTR. */
static void
test_no_eintr(void **state)
{
	struct sleeper s = { .tid = gettid(), .seen_asleep = false };
	struct epoll_event ev = { .events = EPOLLIN };
	pthread_t t;
	int ep = epoll_create1(EPOLL_CLOEXEC), n;

	(void)state;
	s.wake_fd = eventfd(0, EFD_CLOEXEC);
	assert_true(ep != -1 && s.wake_fd != -1);
	assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, s.wake_fd, &ev), 0);
	assert_int_equal(pthread_create(&t, NULL, write_while_asleep, &s), 0);
	n = epoll_wait(ep, &ev, 1, 10000);
	pthread_join(t, NULL);
	close(ep);
	close(s.wake_fd);
	if (!s.seen_asleep)
		skip();         /* /proc unreadable: nothing was shown */
	assert_int_equal(n, 1);
	assert_true(outwatch_wrote());
}

struct two_writes {
	int other_w;
	atomic_bool done;
};

static void *
write_both(void *arg)
{
	struct two_writes *w = arg;

	if (write(w->other_w, "o", 1) != 1 || write(pipe_w, "w", 1) != 1)
		abort();
	atomic_store(&w->done, true);
	return NULL;
}

/* The plugin's own ring, with work pending on the task's thread, must not
 * hide the watch's. */
static void
test_plugin_ring(void **state)
{
	struct io_uring ring;
	int other[2], missed = 0;

	(void)state;
	if (io_uring_queue_init(4, &ring, IORING_SETUP_COOP_TASKRUN) < 0)
		skip();
	assert_int_equal(pipe2(other, O_NONBLOCK | O_CLOEXEC), 0);
	for (int i = 0; i < 200; i++) {
		struct two_writes w = { .other_w = other[1], .done = false };
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
		struct io_uring_cqe *cqe;
		char c;
		pthread_t t;

		io_uring_prep_poll_add(sqe, other[0], POLLIN);
		assert_int_equal(io_uring_submit(&ring), 1);
		assert_int_equal(pthread_create(&t, NULL, write_both, &w), 0);
		while (!atomic_load(&w.done))
			;
		missed += !outwatch_wrote();
		pthread_join(t, NULL);
		assert_int_equal(io_uring_wait_cqe(&ring, &cqe), 0);
		io_uring_cqe_seen(&ring, cqe);
		assert_int_equal(read(other[0], &c, 1), 1);
		drain_and_arm();
	}
	io_uring_queue_exit(&ring);
	close(other[0]);
	close(other[1]);
	assert_int_equal(missed, 0);
}

/* Whether this kernel gives a process the ring outwatch.c asks for, and
 * the pipe can be reopened through /proc. */
static bool
kernel_allows_ring(void)
{
	struct io_uring ring;
	struct io_uring_params params = {
		.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			 IORING_SETUP_TASKRUN_FLAG,
	};

	if (access("/proc/self/fd/0", F_OK) == -1)
		return false;
	if (io_uring_queue_init_params(2, &ring, &params) < 0)
		return false;
	io_uring_queue_exit(&ring);
	return true;
}

static void
test_ring_where_allowed(void **state)
{
	(void)state;
	if (!kernel_allows_ring())
		skip();
	assert_true(watch_uses_ring);
}

/* A forked child does not get the ring (and with it the pipe's read end). */
static void
test_not_inherited(void **state)
{
	int status;
	pid_t pid;

	(void)state;
	if (!watch_uses_ring)
		skip();
	pid = fork();
	assert_true(pid != -1);
	if (pid == 0) {
		FILE *fp = fopen("/proc/self/maps", "re");
		char line[512];
		int found = 0;

		while (fp && fgets(line, sizeof line, fp) != NULL)
			found |= strstr(line, "[io_uring]") != NULL;
		_exit(fp == NULL ? 2 : found);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_quiet_task, pipe_on_fd1, tap_on_fd1),
		cmocka_unit_test_setup_teardown(test_own_write, pipe_on_fd1, tap_on_fd1),
		cmocka_unit_test_setup_teardown(test_thread_write_seen_without_syscall,
						pipe_on_fd1, tap_on_fd1),
		cmocka_unit_test_setup_teardown(test_child_write, pipe_on_fd1, tap_on_fd1),
		cmocka_unit_test_setup_teardown(test_no_eintr, pipe_on_fd1, tap_on_fd1),
		cmocka_unit_test_setup_teardown(test_plugin_ring, pipe_on_fd1, tap_on_fd1),
		cmocka_unit_test(test_ring_where_allowed),
		cmocka_unit_test(test_not_inherited),
	};

	return cmocka_run_group_tests(tests, start_watch, NULL);
}
