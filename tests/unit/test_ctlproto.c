/*
 * test_ctlproto.c - the control protocol's request decoder: lines are cut
 * at '\n' (a '\r' before it dropped), a line longer than CTL_MAX_REQUEST
 * is refused whether or not it is complete, blank lines are ignored, and
 * a request must be a JSON object with this version's "v" and a "cmd".
 * (tests/fuzz/fuzz_ctl.c throws everything else at it.)
 */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "jobrund.h"

static void
test_lines(void **state)
{
	const char *buf = "{\"v\":1}\r\n\n  \t\npartial";
	size_t len = strlen(buf), linelen, used;

	(void)state;
	assert_int_equal(ctlproto_next_line(buf, len, &linelen, &used), 1);
	assert_int_equal(linelen, 7);
	assert_int_equal(used, 9);
	assert_false(ctlproto_blank(buf, linelen));
	buf += used, len -= used;
	assert_int_equal(ctlproto_next_line(buf, len, &linelen, &used), 1);
	assert_int_equal(linelen, 0);
	assert_true(ctlproto_blank(buf, linelen));
	buf += used, len -= used;
	assert_int_equal(ctlproto_next_line(buf, len, &linelen, &used), 1);
	assert_true(ctlproto_blank(buf, linelen));
	buf += used, len -= used;
	assert_int_equal(ctlproto_next_line(buf, len, &linelen, &used), 0);
	assert_int_equal(ctlproto_next_line(buf, 0, &linelen, &used), 0);
}

static void
test_too_long(void **state)
{
	size_t n = CTL_MAX_REQUEST + 2, linelen, used;
	char *buf = malloc(n);

	(void)state;
	memset(buf, 'x', n);
	/* Exactly the limit, then its newline: still a request. */
	buf[CTL_MAX_REQUEST] = '\n';
	assert_int_equal(ctlproto_next_line(buf, n, &linelen, &used), 1);
	assert_int_equal(linelen, CTL_MAX_REQUEST);
	/* One more byte, complete or not: refused. */
	buf[CTL_MAX_REQUEST] = 'x';
	buf[CTL_MAX_REQUEST + 1] = '\n';
	assert_int_equal(ctlproto_next_line(buf, n, &linelen, &used), -1);
	assert_int_equal(ctlproto_next_line(buf, n - 1, &linelen, &used), -1);
	assert_int_equal(ctlproto_next_line(buf, CTL_MAX_REQUEST, &linelen, &used), 0);
	free(buf);
}

static void
expect_refused(const char *line, int rc, const char *words)
{
	const char *cmd = "unset";
	char err[256] = "";
	json_t *req = (json_t *)1;

	assert_int_equal(ctlproto_parse(line, strlen(line), &req, &cmd, err, sizeof err), rc);
	assert_null(req);
	assert_null(cmd);
	if (strstr(err, words) == NULL)
		fail_msg("'%s': error '%s' lacks '%s'", line, err, words);
}

static void
test_parse(void **state)
{
	const char *line = "{\"v\":1,\"cmd\":\"show\",\"job\":\"x\"}";
	const char *cmd;
	char err[256];
	json_t *req;

	(void)state;
	assert_int_equal(ctlproto_parse(line, strlen(line), &req, &cmd, err, sizeof err), 0);
	assert_string_equal(cmd, "show");
	assert_string_equal(json_string_value(json_object_get(req, "job")), "x");
	json_decref(req);

	expect_refused("this is not json", CTLPROTO_MALFORMED, "malformed request: ");
	expect_refused("[1, 2]", CTLPROTO_MALFORMED, "not a JSON object");
	expect_refused("{\"v\":1,\"v\":1,\"cmd\":\"status\"}", CTLPROTO_MALFORMED,
		       "malformed request: ");
	expect_refused("{\"cmd\":\"status\"}", CTLPROTO_INVALID, "no protocol version");
	expect_refused("{\"v\":\"1\",\"cmd\":\"status\"}", CTLPROTO_INVALID,
		       "no protocol version");
	expect_refused("{\"v\":99,\"cmd\":\"status\"}", CTLPROTO_INVALID,
		       "protocol version 99 is not supported");
	expect_refused("{\"v\":1}", CTLPROTO_INVALID, "no command");
	expect_refused("{\"v\":1,\"cmd\":7}", CTLPROTO_INVALID, "no command");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
		cmocka_unit_test(test_too_long),
		cmocka_unit_test(test_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
