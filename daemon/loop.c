/*
 * loop.c - the event loop: one epoll set in the main thread, over which
 * every event jobrund reacts to arrives as a readable descriptor (signals
 * through a signalfd, timers as timerfds, workers' sockets and pidfds,
 * thread-pool completions through an eventfd).
 *
 * Callbacks may add and remove watches freely, even the one being
 * dispatched or another one in the same batch: removal only marks a
 * watch dead, and dead watches are freed after the batch.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "jobrund.h"

struct loop_watch {
	int fd;
	loop_fd_cb cb;
	void *arg;
	bool dead;
	struct loop_watch *next_dead;
	struct loop_watch *prev, *next;         /* every live watch */
};

struct loop_timer {
	int fd;
	struct loop_watch *watch;
	loop_timer_cb cb;
	void *arg;
	bool periodic;
};

static int epfd = -1;
static int signal_fd = -1;      /* loop_signals' own */
static bool stop_requested;
static struct loop_watch *dead_watches;
static struct loop_watch *live_watches;

int
loop_init(void)
{
	epfd = epoll_create1(EPOLL_CLOEXEC);
	return epfd == -1 ? -1 : 0;
}

void
loop_shutdown(void)
{
	/* Watches nobody removed (the signalfd's, the thread pools'
	 * eventfd's) live as long as the loop: free them with it. */
	while (live_watches)
		loop_remove(live_watches);
	while (dead_watches) {
		struct loop_watch *w = dead_watches;
		dead_watches = w->next_dead;
		free(w);
	}
	if (signal_fd != -1)
		close(signal_fd);
	signal_fd = -1;
	if (epfd != -1)
		close(epfd);
	epfd = -1;
}

struct loop_watch *
loop_add(int fd, uint32_t events, loop_fd_cb cb, void *arg)
{
	struct loop_watch *w = xcalloc(1, sizeof *w);
	struct epoll_event ev = { .events = events, .data.ptr = w };

	w->fd = fd;
	w->cb = cb;
	w->arg = arg;
	w->next = live_watches;
	if (live_watches)
		live_watches->prev = w;
	live_watches = w;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == -1)
		fatal("epoll_ctl add fd %d", fd);
	return w;
}

void
loop_modify(struct loop_watch *w, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	if (epoll_ctl(epfd, EPOLL_CTL_MOD, w->fd, &ev) == -1)
		fatal("epoll_ctl mod fd %d", w->fd);
}

void
loop_remove(struct loop_watch *w)
{
	if (w == NULL || w->dead)
		return;
	/* The fd may already be closed by the caller; ignore ENOENT/EBADF. */
	epoll_ctl(epfd, EPOLL_CTL_DEL, w->fd, NULL);
	if (w->prev)
		w->prev->next = w->next;
	else
		live_watches = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->dead = true;
	w->next_dead = dead_watches;
	dead_watches = w;
}

static void
timer_fired(int fd, uint32_t events, void *arg)
{
	struct loop_timer *t = arg;
	uint64_t expirations;

	(void)events;
	if (read(fd, &expirations, sizeof expirations) == -1) {
		/* ECANCELED: the wall clock jumped under an absolute timer;
		 * fire anyway and let the owner work out the next time. */
		if (errno == EAGAIN)
			return;
	}
	/* Several missed periods fire once: a stalled loop must not cause a
	 * burst of runs. */
	t->cb(t->arg);
}

static struct loop_timer *
timer_new(int clock, loop_timer_cb cb, void *arg)
{
	struct loop_timer *t = xcalloc(1, sizeof *t);

	t->fd = timerfd_create(clock, TFD_CLOEXEC | TFD_NONBLOCK);
	if (t->fd == -1)
		fatal("timerfd_create");
	t->cb = cb;
	t->arg = arg;
	t->watch = loop_add(t->fd, EPOLLIN, timer_fired, t);
	return t;
}

static struct timespec
to_timespec(double s)
{
	struct timespec ts;

	if (s < 0)
		s = 0;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000)
		ts.tv_nsec = 999999999;
	return ts;
}

struct loop_timer *
loop_timer_add(double after_s, double interval_s, loop_timer_cb cb, void *arg)
{
	struct loop_timer *t = timer_new(CLOCK_MONOTONIC, cb, arg);
	struct itimerspec its = { 0 };

	its.it_value = to_timespec(after_s);
	/* A zero it_value disarms the timer: "now" means one nanosecond. */
	if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
		its.it_value.tv_nsec = 1;
	its.it_interval = to_timespec(interval_s);
	t->periodic = interval_s > 0;
	if (timerfd_settime(t->fd, 0, &its, NULL) == -1)
		fatal("timerfd_settime");
	return t;
}

struct loop_timer *
loop_timer_at(time_t when, loop_timer_cb cb, void *arg)
{
	struct loop_timer *t = timer_new(CLOCK_REALTIME, cb, arg);
	struct itimerspec its = { 0 };

	its.it_value.tv_sec = when > 0 ? when : 1;
	if (timerfd_settime(t->fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET,
			    &its, NULL) == -1)
		fatal("timerfd_settime");
	return t;
}

struct loop_timer *
loop_timer_new(loop_timer_cb cb, void *arg)
{
	return timer_new(CLOCK_MONOTONIC, cb, arg);
}

void
loop_timer_set(struct loop_timer *t, double after_s, double interval_s)
{
	struct itimerspec its = { 0 };

	if (after_s >= 0) {
		its.it_value = to_timespec(after_s);
		if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
			its.it_value.tv_nsec = 1;
		its.it_interval = to_timespec(interval_s);
	}
	t->periodic = after_s >= 0 && interval_s > 0;
	if (timerfd_settime(t->fd, 0, &its, NULL) == -1)
		fatal("timerfd_settime");
}

double
loop_timer_remaining(const struct loop_timer *t)
{
	struct itimerspec its;

	if (t == NULL || timerfd_gettime(t->fd, &its) == -1)
		return -1;
	if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
		return -1;              /* disarmed: a one-shot that fired */
	return ts_to_s(&its.it_value);
}

void
loop_timer_remove(struct loop_timer *t)
{
	if (t == NULL)
		return;
	loop_remove(t->watch);
	close(t->fd);
	free(t);
}

void
loop_break(void)
{
	stop_requested = true;
}

int
loop_run(void)
{
	struct epoll_event evs[64];

	stop_requested = false;
	while (!stop_requested) {
		int n = epoll_wait(epfd, evs, 64, -1);

		if (n == -1) {
			if (errno == EINTR)
				continue;
			log_warn("epoll_wait");
			return -1;
		}
		for (int i = 0; i < n; i++) {
			struct loop_watch *w = evs[i].data.ptr;
			if (!w->dead)
				w->cb(w->fd, evs[i].events, w->arg);
		}
		while (dead_watches) {
			struct loop_watch *w = dead_watches;
			dead_watches = w->next_dead;
			free(w);
		}
	}
	return 0;
}

struct signal_watch {
	void (*cb)(int signo, void *arg);
	void *arg;
};

static void
signal_ready(int fd, uint32_t events, void *arg)
{
	struct signal_watch *sw = arg;
	struct signalfd_siginfo si;

	(void)events;
	while (read(fd, &si, sizeof si) == (ssize_t)sizeof si)
		sw->cb((int)si.ssi_signo, sw->arg);
}

void
loop_signals(void (*cb)(int signo, void *arg), void *arg)
{
	static struct signal_watch sw;
	sigset_t set;
	int fd;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1)
		fatal("sigprocmask");
	fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (fd == -1)
		fatal("signalfd");
	sw.cb = cb;
	sw.arg = arg;
	loop_add(fd, EPOLLIN, signal_ready, &sw);
	signal_fd = fd;
}
