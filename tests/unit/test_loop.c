/*
 * test_loop.c - unit tests for the timers of daemon/loop.c, through the
 * real epoll loop: order of firing, periodic timers and missed periods,
 * timers re-set, disarmed or removed by another timer's callback in the
 * same round, zero-delay timers that wait for the next round, wall-clock
 * timers, and many timers without a descriptor each.
 */
#include "config.h"

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobrund.h"

/* What fired, in order. */
static char fired[256];
static size_t nfired;

struct probe {
	char name;
	int left;                       /* fires before it breaks the loop
					   (0: never breaks) */
	struct loop_timer *victim;      /* removed, re-set or disarmed */
	int action;                     /* 1 remove, 2 re-set, 3 disarm */
};

static void
probe_cb(void *arg)
{
	struct probe *p = arg;

	if (nfired < sizeof fired - 1)
		fired[nfired++] = p->name;
	if (p->victim) {
		switch (p->action) {
		case 1:
			loop_timer_remove(p->victim);
			break;
		case 2:
			loop_timer_set(p->victim, 0.05, 0);
			break;
		case 3:
			loop_timer_set(p->victim, -1, 0);
			break;
		}
		p->victim = NULL;
	}
	if (p->left > 0 && --p->left == 0)
		loop_break();
}

static int
setup(void **state)
{
	(void)state;
	nfired = 0;
	memset(fired, 0, sizeof fired);
	return loop_init();
}

static int
teardown(void **state)
{
	(void)state;
	loop_shutdown();
	return 0;
}

static int
open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	assert_non_null(d);
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void
test_order(void **state)
{
	struct probe a = { .name = 'a' }, b = { .name = 'b' };
	struct probe c = { .name = 'c', .left = 1 };
	struct loop_timer *ta, *tb, *tc;

	(void)state;
	tc = loop_timer_add(0.030, 0, probe_cb, &c);
	ta = loop_timer_add(0.010, 0, probe_cb, &a);
	tb = loop_timer_add(0.020, 0, probe_cb, &b);
	assert_true(loop_timer_remaining(ta) > 0);
	assert_int_equal(loop_run(), 0);
	assert_string_equal(fired, "abc");
	assert_true(loop_timer_remaining(ta) < 0);      /* one-shots: done */
	loop_timer_remove(ta);
	loop_timer_remove(tb);
	loop_timer_remove(tc);
}

static void
test_periodic(void **state)
{
	struct probe p = { .name = 'p', .left = 3 };
	struct loop_timer *tp;
	double t0 = mono_now();

	(void)state;
	tp = loop_timer_add(0.005, 0.010, probe_cb, &p);
	assert_int_equal(loop_run(), 0);
	assert_string_equal(fired, "ppp");
	/* Never early: at 5, 15 and 25 ms at the soonest. */
	assert_true(mono_now() - t0 >= 0.025);
	assert_true(loop_timer_remaining(tp) >= 0);     /* still armed */
	loop_timer_remove(tp);
}

/* A stalled loop fires a periodic timer once, not once per missed
 * period: its next period counts from when it fired. */
static void
test_missed_periods_fire_once(void **state)
{
	struct probe p = { .name = 'p' }, stop = { .name = 's', .left = 1 };
	struct loop_timer *tp, *ts;
	struct timespec ts200 = { 0, 200 * 1000000 };

	(void)state;
	tp = loop_timer_add(0.001, 0.050, probe_cb, &p);
	nanosleep(&ts200, NULL);        /* four periods pass unserved */
	ts = loop_timer_add(0.020, 0, probe_cb, &stop);
	assert_int_equal(loop_run(), 0);
	/* Once, then the stop 20 ms on, before its next period (50 ms on);
	 * a burst would show as "pp...". */
	assert_memory_equal(fired, "ps", 2);
	loop_timer_remove(tp);
	loop_timer_remove(ts);
}

/* Due in the same round: a callback that removes, re-sets or disarms a
 * later one stops it firing in that round (as a timerfd would). */
static void
test_changed_by_an_earlier_callback(void **state)
{
	struct probe rm = { .name = 'r' }, rs = { .name = 's' }, ds = { .name = 'd' };
	struct probe x = { .name = 'x' }, y = { .name = 'y', .left = 1 };
	struct probe z = { .name = 'z' }, stop = { .name = '.', .left = 1 };
	struct loop_timer *tx, *ty, *tz, *t1, *t2, *t3, *tstop;
	struct timespec ts = { 0, 20 * 1000000 };

	(void)state;
	/* All due before the loop runs; the heap fires them by due time. */
	t1 = loop_timer_add(0.001, 0, probe_cb, &rm);
	t2 = loop_timer_add(0.002, 0, probe_cb, &rs);
	t3 = loop_timer_add(0.003, 0, probe_cb, &ds);
	tx = loop_timer_add(0.004, 0, probe_cb, &x);
	ty = loop_timer_add(0.005, 0, probe_cb, &y);
	tz = loop_timer_add(0.006, 0, probe_cb, &z);
	rm.victim = tx;
	rm.action = 1;
	rs.victim = ty;
	rs.action = 2;
	ds.victim = tz;
	ds.action = 3;
	tstop = loop_timer_add(5.0, 0, probe_cb, &stop);   /* if y never fires */
	nanosleep(&ts, NULL);
	assert_int_equal(loop_run(), 0);
	/* x removed, z disarmed: never; y re-set: 50 ms later, once. */
	assert_string_equal(fired, "rsdy");
	assert_true(loop_timer_remaining(tz) < 0);
	loop_timer_remove(t1);
	loop_timer_remove(t2);
	loop_timer_remove(t3);
	loop_timer_remove(ty);
	loop_timer_remove(tz);
	loop_timer_remove(tstop);
}

/* A zero-delay timer set by a callback runs in a later round, after the
 * events already waiting: it cannot starve the loop. */
static int zero_runs;

static void
zero_again(void *arg)
{
	struct loop_timer **t = arg;

	if (++zero_runs < 1000000)
		loop_timer_set(*t, 0, 0);
}

static void
test_zero_delay_yields(void **state)
{
	struct probe stop = { .name = 's', .left = 1 };
	struct loop_timer *tz, *ts;

	(void)state;
	tz = loop_timer_new(zero_again, &tz);
	loop_timer_set(tz, 0, 0);
	ts = loop_timer_add(0.010, 0, probe_cb, &stop);
	assert_int_equal(loop_run(), 0);
	/* The stop timer got its turn while the other kept re-arming. */
	assert_string_equal(fired, "s");
	assert_true(zero_runs > 1 && zero_runs < 1000000);
	loop_timer_remove(tz);
	loop_timer_remove(ts);
}

static void
test_wall_clock(void **state)
{
	struct probe past = { .name = 'p' }, soon = { .name = 'w', .left = 1 };
	struct loop_timer *tp, *tw;

	(void)state;
	tp = loop_timer_at(time(NULL) - 10, probe_cb, &past);
	tw = loop_timer_at(time(NULL) + 1, probe_cb, &soon);
	assert_int_equal(loop_run(), 0);
	assert_string_equal(fired, "pw");
	loop_timer_remove(tp);
	loop_timer_remove(tw);
}

/* Ten thousand timers, no descriptor each; removed in any order. */
static void
test_many_timers_no_descriptors(void **state)
{
	enum { N = 10000 };
	struct loop_timer **t = xcalloc(N, sizeof *t);
	struct probe p = { .name = 'm' }, stop = { .name = 's', .left = 1 };
	struct loop_timer *ts;
	int before = open_fds();

	(void)state;
	for (int i = 0; i < N; i++)
		t[i] = loop_timer_add(0.001 + (double)((i * 7919) % N) / 1e6, 0,
				      probe_cb, &p);
	assert_int_equal(open_fds(), before);
	/* Half of them removed before they fire, from the middle of the
	 * heap and its ends. */
	for (int i = 0; i < N; i += 2)
		loop_timer_remove(t[i]);
	ts = loop_timer_add(0.050, 0, probe_cb, &stop);
	assert_int_equal(loop_run(), 0);
	/* The first 255 recorded; every remaining one fired (nfired caps). */
	assert_int_equal(nfired, sizeof fired - 1);
	for (int i = 1; i < N; i += 2) {
		assert_true(loop_timer_remaining(t[i]) < 0);
		loop_timer_remove(t[i]);
	}
	loop_timer_remove(ts);
	free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_periodic, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missed_periods_fire_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_changed_by_an_earlier_callback,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_zero_delay_yields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wall_clock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_timers_no_descriptors,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
