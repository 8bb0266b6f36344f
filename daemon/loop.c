/*
 * loop.c - the event loop: one epoll set in the main thread, over which
 * every event jobrund reacts to arrives as a readable descriptor (signals
 * through a signalfd, workers' sockets and pidfds, thread-pool
 * completions through an eventfd), and its timers.  Timers are kept in a
 * heap per clock (CLOCK_MONOTONIC, and CLOCK_REALTIME for cron) behind one
 * timerfd each, armed for the earliest: a timer costs no descriptor, so
 * making one never fails, however many workers, runs and clients there
 * are.
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

/* A clock's timers: a heap ordered by due time, behind one timerfd armed
 * for the earliest, so that a timer is no descriptor of its own. */
struct timer_clock {
	clockid_t id;
	bool wall;                      /* CLOCK_REALTIME: absolute, and
					   cancelled when the clock is set */
	int fd;
	struct loop_timer **heap;
	size_t n, cap;
	double armed_for;               /* what the timerfd is set to; -1: off */
};

struct loop_timer {
	struct timer_clock *clk;
	loop_timer_cb cb;
	void *arg;
	double due;                     /* on clk, in seconds */
	double interval;                /* > 0: periodic */
	size_t idx;                     /* in clk->heap; NOT_ARMED when not */
	uint64_t gen;                   /* bumped when set or disarmed */
	bool dead;                      /* removed while its clock fires */
	struct loop_timer *next_dead;
};

#define NOT_ARMED SIZE_MAX

static int epfd = -1;
static int signal_fd = -1;      /* loop_signals' own */
static bool stop_requested;
static struct loop_watch *dead_watches;
static struct loop_watch *live_watches;

static struct timer_clock mono_clock = { .id = CLOCK_MONOTONIC, .fd = -1 };
static struct timer_clock wall_clock = { .id = CLOCK_REALTIME, .wall = true, .fd = -1 };
static struct timer_clock *const clocks[] = { &mono_clock, &wall_clock };
static bool firing;                     /* a clock's timers are being fired */
static struct loop_timer *dead_timers;  /* removed meanwhile: freed after */
/* The timers a round fires, and the generation each had when taken off:
 * kept from round to round (rounds never nest). */
static struct due_timer {
	struct loop_timer *t;
	uint64_t gen;
} *firing_list;
static size_t firing_cap;

static void clock_ready(int fd, uint32_t events, void *arg);

static int
clock_open(struct timer_clock *c)
{
	c->fd = timerfd_create(c->id, TFD_CLOEXEC | TFD_NONBLOCK);
	if (c->fd == -1)
		return -1;
	c->armed_for = -1;
	loop_add(c->fd, EPOLLIN, clock_ready, c);
	return 0;
}

int
loop_init(void)
{
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd == -1 || clock_open(&mono_clock) == -1 || clock_open(&wall_clock) == -1)
		return -1;
	return 0;
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
	for (size_t i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
		struct timer_clock *c = clocks[i];

		if (c->fd != -1)
			close(c->fd);
		c->fd = -1;
		/* A timer its owner still holds is disarmed, not dangling. */
		for (size_t j = 0; j < c->n; j++)
			c->heap[j]->idx = NOT_ARMED;
		free(c->heap);
		c->heap = NULL;
		c->n = c->cap = 0;
	}
	free(firing_list);
	firing_list = NULL;
	firing_cap = 0;
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

/* --- timers ------------------------------------------------------------ */

static double
clock_now(const struct timer_clock *c)
{
	struct timespec ts;

	clock_gettime(c->id, &ts);
	return ts_to_s(&ts);
}

static void
heap_put(struct timer_clock *c, size_t i, struct loop_timer *t)
{
	c->heap[i] = t;
	t->idx = i;
}

static void
sift_up(struct timer_clock *c, size_t i)
{
	struct loop_timer *t = c->heap[i];

	while (i > 0 && c->heap[(i - 1) / 2]->due > t->due) {
		heap_put(c, i, c->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_put(c, i, t);
}

static void
sift_down(struct timer_clock *c, size_t i)
{
	struct loop_timer *t = c->heap[i];

	for (;;) {
		size_t l = 2 * i + 1, m = l;

		if (l >= c->n)
			break;
		if (l + 1 < c->n && c->heap[l + 1]->due < c->heap[l]->due)
			m = l + 1;
		if (c->heap[m]->due >= t->due)
			break;
		heap_put(c, i, c->heap[m]);
		i = m;
	}
	heap_put(c, i, t);
}

static void
heap_insert(struct timer_clock *c, struct loop_timer *t)
{
	if (c->n == c->cap) {
		c->cap = c->cap ? 2 * c->cap : 16;
		c->heap = xrealloc(c->heap, c->cap * sizeof *c->heap);
	}
	heap_put(c, c->n++, t);
	sift_up(c, t->idx);
}

static void
heap_delete(struct timer_clock *c, struct loop_timer *t)
{
	size_t i = t->idx;
	struct loop_timer *last = c->heap[--c->n];

	t->idx = NOT_ARMED;
	if (i == c->n)
		return;
	heap_put(c, i, last);
	sift_down(c, i);
	sift_up(c, last->idx);
}

/* Set the clock's timerfd for its earliest timer, when that changed. */
static void
clock_arm(struct timer_clock *c)
{
	struct itimerspec its = { 0 };
	double due = c->n ? c->heap[0]->due : -1;
	int flags = 0;

	if (due == c->armed_for)
		return;
	if (due >= 0) {
		its.it_value.tv_sec = (time_t)due;
		its.it_value.tv_nsec = (long)((due - (double)its.it_value.tv_sec) * 1e9);
		if (its.it_value.tv_nsec >= 1000000000)
			its.it_value.tv_nsec = 999999999;
		/* Zero disarms: the earliest possible time instead. */
		if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
			its.it_value.tv_nsec = 1;
		flags = TFD_TIMER_ABSTIME | (c->wall ? TFD_TIMER_CANCEL_ON_SET : 0);
	}
	/* Only bad arguments make this fail, and they are ours. */
	if (timerfd_settime(c->fd, flags, &its, NULL) == -1)
		fatal("timerfd_settime");
	c->armed_for = due;
}

/*
 * Fire the clock's due timers (all of them when the wall clock was set:
 * each owner works out its next time).  Those due are taken off first;
 * a periodic one is put back for its next period (several missed periods
 * fire once: a stalled loop must not cause a burst of runs).  A timer
 * that an earlier callback of the round removed, re-set or disarmed does
 * not fire, as a timerfd read after timerfd_settime would not have.
 */
static void
clock_ready(int fd, uint32_t events, void *arg)
{
	struct timer_clock *c = arg;
	uint64_t expirations;
	bool all = false;
	double now;
	size_t n = 0;

	(void)events;
	if (read(fd, &expirations, sizeof expirations) == -1) {
		if (errno == EAGAIN)
			return;
		all = errno == ECANCELED;
	}
	now = clock_now(c);
	while (c->n > 0 && (all || c->heap[0]->due <= now)) {
		struct loop_timer *t = c->heap[0];

		heap_delete(c, t);
		if (n == firing_cap) {
			firing_cap = firing_cap ? 2 * firing_cap : 16;
			firing_list = xrealloc(firing_list, firing_cap * sizeof *firing_list);
		}
		firing_list[n].t = t;
		firing_list[n++].gen = t->gen;
	}
	for (size_t i = 0; i < n; i++) {
		struct loop_timer *t = firing_list[i].t;

		if (t->interval > 0) {
			t->due += t->interval;
			if (t->due <= now)
				t->due = now + t->interval;
			heap_insert(c, t);
		}
	}
	c->armed_for = -2;              /* read it: set it again, whatever */
	clock_arm(c);
	firing = true;
	for (size_t i = 0; i < n; i++) {
		const struct due_timer *d = &firing_list[i];

		if (!d->t->dead && d->t->gen == d->gen)
			d->t->cb(d->t->arg);
	}
	firing = false;
	while (dead_timers) {
		struct loop_timer *t = dead_timers;

		dead_timers = t->next_dead;
		free(t);
	}
}

static struct loop_timer *
timer_new(struct timer_clock *c, loop_timer_cb cb, void *arg)
{
	struct loop_timer *t = xcalloc(1, sizeof *t);

	t->clk = c;
	t->cb = cb;
	t->arg = arg;
	t->idx = NOT_ARMED;
	return t;
}

/* Arm T to fire at DUE on its clock (every INTERVAL seconds after), or
 * disarm it (DUE < 0). */
static void
timer_arm(struct loop_timer *t, double due, double interval)
{
	struct timer_clock *c = t->clk;

	t->gen++;
	if (t->idx != NOT_ARMED)
		heap_delete(c, t);
	if (due >= 0) {
		t->due = due;
		t->interval = interval > 0 ? interval : 0;
		heap_insert(c, t);
	}
	clock_arm(c);
}

struct loop_timer *
loop_timer_add(double after_s, double interval_s, loop_timer_cb cb, void *arg)
{
	struct loop_timer *t = timer_new(&mono_clock, cb, arg);

	loop_timer_set(t, after_s < 0 ? 0 : after_s, interval_s);
	return t;
}

struct loop_timer *
loop_timer_at(time_t when, loop_timer_cb cb, void *arg)
{
	struct loop_timer *t = timer_new(&wall_clock, cb, arg);

	timer_arm(t, when > 0 ? (double)when : 1, 0);
	return t;
}

struct loop_timer *
loop_timer_new(loop_timer_cb cb, void *arg)
{
	return timer_new(&mono_clock, cb, arg);
}

void
loop_timer_set(struct loop_timer *t, double after_s, double interval_s)
{
	timer_arm(t, after_s >= 0 ? clock_now(t->clk) + after_s : -1, interval_s);
}

double
loop_timer_remaining(const struct loop_timer *t)
{
	double left;

	if (t == NULL || t->idx == NOT_ARMED)
		return -1;
	left = t->due - clock_now(t->clk);
	return left > 0 ? left : 0;
}

void
loop_timer_remove(struct loop_timer *t)
{
	if (t == NULL)
		return;
	if (t->idx != NOT_ARMED) {
		heap_delete(t->clk, t);
		clock_arm(t->clk);
	}
	if (firing) {
		t->dead = true;
		t->next_dead = dead_timers;
		dead_timers = t;
	} else {
		free(t);
	}
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
