/*
 * test_duration.c - unit tests for duration.c: a table of strings that
 * must parse (and to what), and of strings that must be refused (and
 * with which errno).
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "jobrund.h"

static void
test_good(void **state)
{
	static const struct {
		const char *text;
		double seconds;
	} good[] = {
		{ "0", 0 },
		{ "30", 30 },
		{ "1.5", 1.5 },
		{ ".25", 0.25 },
		{ "2.", 2 },
		{ "0s", 0 },
		{ "500ms", 0.5 },
		{ "5s", 5 },
		{ "1.5s", 1.5 },
		{ ".5s", 0.5 },
		{ "2m", 120 },
		{ "1h", 3600 },
		{ "1d", 86400 },
		{ "1.5m", 90 },
		{ "1m30s", 90 },
		{ "1h30m", 5400 },
		{ "2h15s", 7215 },
		{ "1s250ms", 1.25 },
		{ "1d2h3m4s5ms", 86400 + 7200 + 180 + 4 + 0.005 },
		{ "3650d", 3650.0 * 86400 },            /* the limit itself */
		{ "315360000", 315360000 },
		{ "0000000000000000000000000000000000000000000000000000000000000000001s", 1 },
	};

	(void)state;
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		double v = -1;

		if (duration_parse(good[i].text, &v) != 0)
			fail_msg("\"%s\": refused: %s", good[i].text,
				 strerror(errno));
		if (fabs(v - good[i].seconds) > 1e-9)
			fail_msg("\"%s\": %.17g, expected %.17g", good[i].text,
				 v, good[i].seconds);
	}
}

static void
test_bad(void **state)
{
	static const struct {
		const char *text;
		int err;
	} bad[] = {
		{ "", EINVAL },
		{ " 5s", EINVAL },
		{ "5s ", EINVAL },
		{ "5 s", EINVAL },
		{ "1m 30s", EINVAL },
		{ "abc", EINVAL },
		{ "s", EINVAL },
		{ "ms", EINVAL },
		{ ".", EINVAL },
		{ ".s", EINVAL },
		{ "5x", EINVAL },
		{ "5S", EINVAL },
		{ "5sec", EINVAL },
		{ "1m30", EINVAL },             /* a bare number only alone */
		{ "30s1m", EINVAL },            /* units in decreasing order */
		{ "1s1s", EINVAL },
		{ "1..5s", EINVAL },
		{ "1.5.2s", EINVAL },
		{ "+5", EINVAL },
		{ "1e3", EINVAL },
		{ "0x10", EINVAL },
		{ "nan", EINVAL },
		{ "inf", EINVAL },
		{ "infinity", EINVAL },
		{ "-", EINVAL },
		{ "-junk", EINVAL },
		{ "-5s", ERANGE },
		{ "-1", ERANGE },
		{ "-0", ERANGE },
		{ "3651d", ERANGE },            /* over ten years */
		{ "315360001", ERANGE },
		{ "99999999999999999999h", ERANGE },
		{ "1000000000000000000000000000000000000000000000000000000000000000000000"
		  "0000000000000000000000000000000000000000000000000000000000000000000000"
		  "0000000000000000000000000000000000000000000000000000000000000000000000"
		  "0000000000000000000000000000000000000000000000000000000000000000000000"
		  "0000000000000000000000000000000000000000000000000000000000000000000000"
		  "0000000000000000000000000000000000000000000000000000000000000000000000", ERANGE },
	};

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		double v = 42;

		errno = 0;
		if (duration_parse(bad[i].text, &v) != -1)
			fail_msg("\"%s\": accepted as %g", bad[i].text, v);
		if (errno != bad[i].err)
			fail_msg("\"%s\": errno %d (%s), expected %d (%s)",
				 bad[i].text, errno, strerror(errno),
				 bad[i].err, strerror(bad[i].err));
		if (v != 42)
			fail_msg("\"%s\": result written on failure", bad[i].text);
	}
}

static void
test_null(void **state)
{
	double v = 42;

	(void)state;
	errno = 0;
	assert_int_equal(duration_parse(NULL, &v), -1);
	assert_int_equal(errno, EINVAL);
	assert_true(v == 42);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good),
		cmocka_unit_test(test_bad),
		cmocka_unit_test(test_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
