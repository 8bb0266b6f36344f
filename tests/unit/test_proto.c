/*
 * test_proto.c - the daemon <-> worker protocol: every message survives a
 * round trip; truncated, padded, oversized or hostile frames are refused
 * (never over-read); frames split across reads are reassembled; the
 * shared claim word's halves survive wrapping at 2^32.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "jobrund.h"

/* The one frame in B: its type, payload and payload length. */
static const uint8_t *
frame_payload(const struct pbuf *b, uint8_t *type, size_t *len)
{
	uint32_t flen = (uint32_t)b->data[0] | (uint32_t)b->data[1] << 8 |
			(uint32_t)b->data[2] << 16 | (uint32_t)b->data[3] << 24;

	assert_int_equal(flen + 4, b->len);
	*type = b->data[4];
	*len = flen - 1;
	return b->data + 5;
}

static void
test_hello_roundtrip(void **state)
{
	struct pbuf b = { 0 };
	struct msg_hello in = { .version = PROTO_VERSION, .job = "squares",
		.plugin_dir = "/usr/lib/jobrund", .plugin = "cpu",
		.settings = "factor = 3;\n", .config_file = "/etc/jobrund.conf",
		.log_level = 7 }, out;
	const uint8_t *p;
	uint8_t type;
	size_t len;

	(void)state;
	proto_put_hello(&b, &in);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_HELLO);
	assert_int_equal(proto_get_hello(p, len, &out), 0);
	assert_int_equal(out.version, PROTO_VERSION);
	assert_string_equal(out.job, "squares");
	assert_string_equal(out.plugin_dir, "/usr/lib/jobrund");
	assert_string_equal(out.plugin, "cpu");
	assert_string_equal(out.settings, "factor = 3;\n");
	assert_string_equal(out.config_file, "/etc/jobrund.conf");
	assert_int_equal(out.log_level, 7);
	proto_hello_free(&out);

	/* No settings travels as "none", not as an empty string. */
	b.len = 0;
	in.settings = NULL;
	proto_put_hello(&b, &in);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_hello(p, len, &out), 0);
	assert_null(out.settings);
	proto_hello_free(&out);
	pbuf_free(&b);
}

static void
test_tasks_and_result_roundtrip(void **state)
{
	struct pbuf b = { 0 };
	const char *inputs[] = { "1000000", NULL, "", "x\ny" };
	struct msg_tasks t = { .first = 42, .count = 4, .timeout_s = 2.5,
		.inputs = inputs }, t2;
	static const char binary[] = { 'a', '\0', 'b', '\xff' };
	struct msg_result r = { .id = 42, .status = TASK_FAILED,
		.flags = PROTO_RESULT_OUTPUT,
		.output = binary, .output_len = sizeof binary,
		.error = "bad input", .error_len = 9,
		.started_sec = 1795000000, .started_nsec = 123456789,
		.wall_s = 0.25, .cpu_s = 0.125 }, r2;
	const uint8_t *p;
	uint8_t type;
	size_t len, at;

	(void)state;
	proto_put_tasks(&b, &t);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_TASKS);
	assert_int_equal(proto_get_tasks(p, len, &t2), 0);
	assert_int_equal(t2.first, 42);
	assert_int_equal(t2.count, 4);
	assert_true(t2.timeout_s == 2.5);
	assert_string_equal(t2.inputs[0], "1000000");
	assert_null(t2.inputs[1]);
	assert_string_equal(t2.inputs[2], "");
	assert_string_equal(t2.inputs[3], "x\ny");
	proto_tasks_free(&t2);

	/* Built one input at a time, it is the same frame. */
	{
		struct pbuf b2 = { 0 };

		at = proto_tasks_begin(&b2, 42, 2.5);
		for (int i = 0; i < 4; i++)
			proto_tasks_add(&b2, inputs[i]);
		proto_tasks_end(&b2, at, 4);
		assert_int_equal(b2.len, b.len);
		assert_memory_equal(b2.data, b.data, b.len);
		pbuf_free(&b2);
	}

	/* A result borrows its strings from the frame. */
	b.len = 0;
	proto_put_result(&b, &r);
	assert_int_equal(b.len, proto_result_size(&r));
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_RESULT);
	assert_int_equal(proto_get_result(p, len, &r2), 0);
	assert_int_equal(r2.id, 42);
	assert_int_equal(r2.status, TASK_FAILED);
	assert_int_equal(r2.flags, PROTO_RESULT_OUTPUT);
	assert_int_equal(r2.output_len, sizeof binary);
	assert_memory_equal(r2.output, binary, sizeof binary);
	assert_true(r2.output >= (const char *)p && r2.output < (const char *)p + len);
	assert_int_equal(r2.error_len, 9);
	assert_memory_equal(r2.error, "bad input", 9);
	assert_int_equal(r2.started_sec, 1795000000);
	assert_int_equal(r2.started_nsec, 123456789);
	assert_true(r2.wall_s == 0.25 && r2.cpu_s == 0.125);

	/* No error travels as "none". */
	b.len = 0;
	r.error = NULL;
	r.error_len = 0;
	proto_put_result(&b, &r);
	assert_int_equal(b.len, proto_result_size(&r));
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_result(p, len, &r2), 0);
	assert_null(r2.error);

	/* Into a buffer of exactly its size (the worker's spool). */
	{
		uint8_t room[256];
		struct pbuf fixed = { room, 0, proto_result_size(&r) };

		proto_put_result(&fixed, &r);
		assert_ptr_equal(fixed.data, room);
		assert_int_equal(fixed.len, b.len);
		assert_memory_equal(room, b.data, b.len);
	}
	pbuf_free(&b);
}

/* TASKS frames the worker must refuse. */
static void
test_tasks_hostile(void **state)
{
	struct pbuf b = { 0 };
	const char *one[] = { "a" };
	struct msg_tasks t = { .first = 1, .count = 1, .inputs = one }, t2;
	const uint8_t *p;
	uint8_t type, *copy;
	size_t len, at;

	(void)state;
	/* No task, too many, ids past 2^64, a NaN or negative timeout. */
	at = proto_tasks_begin(&b, 1, 0);
	proto_tasks_end(&b, at, 0);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_tasks(p, len, &t2), -1);
	assert_int_equal(errno, EPROTO);

	b.len = 0;
	at = proto_tasks_begin(&b, 1, 0);
	for (int i = 0; i < PROTO_MAX_BATCH + 1; i++)
		proto_tasks_add(&b, "x");
	proto_tasks_end(&b, at, PROTO_MAX_BATCH + 1);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_tasks(p, len, &t2), -1);

	b.len = 0;
	t.first = UINT64_MAX;
	proto_put_tasks(&b, &t);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_tasks(p, len, &t2), -1);
	t.first = 1;

	for (int i = 0; i < 2; i++) {
		b.len = 0;
		t.timeout_s = i ? -1.0 : 0.0 / 0.0;
		proto_put_tasks(&b, &t);
		p = frame_payload(&b, &type, &len);
		assert_int_equal(proto_get_tasks(p, len, &t2), -1);
	}
	t.timeout_s = 0;

	/* A count larger than the inputs there, every truncation, and a
	 * byte too many. */
	b.len = 0;
	at = proto_tasks_begin(&b, 1, 0);
	proto_tasks_add(&b, "a");
	proto_tasks_end(&b, at, 2);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_tasks(p, len, &t2), -1);

	b.len = 0;
	proto_put_tasks(&b, &t);
	p = frame_payload(&b, &type, &len);
	for (size_t cut = 0; cut < len; cut++)
		assert_int_equal(proto_get_tasks(p, cut, &t2), -1);
	copy = malloc(len + 1);
	memcpy(copy, p, len);
	copy[len] = 0;
	assert_int_equal(proto_get_tasks(copy, len + 1, &t2), -1);
	free(copy);
	pbuf_free(&b);
}

/* The claim word's halves wrap at 2^32; unpacked against a reference
 * below them, they come back whole. */
static void
test_claim_word(void **state)
{
	uint64_t base = 0xfffffff0ull, word;

	(void)state;
	word = proto_claim(base + 5, base + 40);        /* both wrap */
	assert_true((uint32_t)word == (uint32_t)(base + 5));
	assert_true(proto_claim_next(word, base) == base + 5);
	assert_true(proto_claim_limit(word, base + 5) == base + 40);
	word = proto_claim(7, 7);
	assert_true(proto_claim_next(word, 0) == 7);
	assert_true(proto_claim_limit(word, 7) == 7);
	/* Far past the first 2^32 tasks. */
	base = (5ull << 32) + 3;
	word = proto_claim(base, base + 1000);
	assert_true(proto_claim_next(word, base - 100) == base);
	assert_true(proto_claim_limit(word, base) == base + 1000);
}

static void
test_small_messages_roundtrip(void **state)
{
	struct pbuf b = { 0 };
	struct msg_ready rd = { .version = PROTO_VERSION, .pid = 4242 }, rd2;
	struct msg_fail f = { .message = "cannot load" }, f2;
	struct msg_cancel c = { .id = 7 }, c2;
	struct msg_ack a = { .id = 1ull << 40 }, a2;
	struct msg_log l = { .priority = LOG_NOTICE, .text = "hello" }, l2;
	const uint8_t *p;
	uint8_t type;
	size_t len;

	(void)state;
	proto_put_ready(&b, &rd);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_READY);
	assert_int_equal(proto_get_ready(p, len, &rd2), 0);
	assert_int_equal(rd2.pid, 4242);

	b.len = 0;
	proto_put_fail(&b, &f);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_fail(p, len, &f2), 0);
	assert_string_equal(f2.message, "cannot load");
	proto_fail_free(&f2);

	b.len = 0;
	proto_put_cancel(&b, &c);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_CANCEL);
	assert_int_equal(proto_get_cancel(p, len, &c2), 0);
	assert_int_equal(c2.id, 7);

	b.len = 0;
	proto_put_ack(&b, &a);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_ACK);
	assert_int_equal(proto_get_ack(p, len, &a2), 0);
	assert_true(a2.id == 1ull << 40);
	assert_int_equal(proto_get_ack(p, len - 1, &a2), -1);

	b.len = 0;
	proto_put_log(&b, &l);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_log(p, len, &l2), 0);
	assert_int_equal(l2.priority, LOG_NOTICE);
	assert_string_equal(l2.text, "hello");
	proto_log_free(&l2);
	pbuf_free(&b);
}

/* The worker factory's request and answer: the environment comes back
 * whole and NULL-terminated; a count the frame cannot hold, a variable
 * with a NUL inside and every truncation are refused. */
static void
test_spawn_roundtrip(void **state)
{
	const char *env[] = { "PATH=/bin", "", "JOBRUND_WORKER=1.2", NULL };
	struct msg_spawn rq = { .seq = 1ull << 33, .job = "nightly", .nenv = 3,
				.env = env }, rq2;
	struct msg_spawned ans = { .seq = 9, .pid = 1234, .error = 0 }, ans2;
	struct pbuf b = { 0 };
	const uint8_t *p;
	uint8_t type, *copy;
	size_t len;

	(void)state;
	proto_put_spawn(&b, &rq);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_SPAWN);
	assert_int_equal(proto_get_spawn(p, len, &rq2), 0);
	assert_true(rq2.seq == 1ull << 33);
	assert_string_equal(rq2.job, "nightly");
	assert_int_equal(rq2.nenv, 3);
	for (int i = 0; i < 3; i++)
		assert_string_equal(rq2.env[i], env[i]);
	assert_null(rq2.env[3]);
	proto_spawn_free(&rq2);
	for (size_t cut = 0; cut < len; cut++)
		assert_int_equal(proto_get_spawn(p, cut, &rq2), -1);

	/* nenv (after seq and the job string) says 2^32 - 1 variables. */
	copy = malloc(len);
	memcpy(copy, p, len);
	memset(copy + 8 + 4 + 7, 0xff, 4);
	errno = 0;
	assert_int_equal(proto_get_spawn(copy, len, &rq2), -1);
	assert_int_equal(errno, EPROTO);
	/* The first variable's P turned into a NUL. */
	memcpy(copy, p, len);
	copy[8 + 4 + 7 + 4 + 4] = '\0';
	assert_int_equal(proto_get_spawn(copy, len, &rq2), -1);
	free(copy);

	b.len = 0;
	proto_put_spawned(&b, &ans);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(type, MSG_SPAWNED);
	assert_int_equal(proto_get_spawned(p, len, &ans2), 0);
	assert_true(ans2.seq == 9 && ans2.pid == 1234 && ans2.error == 0);
	assert_int_equal(proto_get_spawned(p, len - 1, &ans2), -1);
	pbuf_free(&b);
}

/* Every truncation of a valid payload, and one byte too many, is refused. */
static void
test_truncated_and_padded(void **state)
{
	struct pbuf b = { 0 };
	struct msg_result r = { .id = 1, .status = TASK_OK, .output = "out",
		.output_len = 3, .error = "e", .error_len = 1, .started_nsec = 0 }, r2;
	struct msg_hello h = { .version = 1, .job = "j", .plugin_dir = "/d",
		.plugin = "p" }, h2;
	const uint8_t *p;
	uint8_t type, *copy;
	size_t len;

	(void)state;
	proto_put_result(&b, &r);
	p = frame_payload(&b, &type, &len);
	for (size_t cut = 0; cut < len; cut++) {
		copy = malloc(cut ? cut : 1);
		memcpy(copy, p, cut);
		errno = 0;
		assert_int_equal(proto_get_result(copy, cut, &r2), -1);
		assert_int_equal(errno, EPROTO);
		free(copy);
	}
	copy = malloc(len + 1);
	memcpy(copy, p, len);
	copy[len] = 0;
	assert_int_equal(proto_get_result(copy, len + 1, &r2), -1);
	free(copy);

	b.len = 0;
	proto_put_hello(&b, &h);
	p = frame_payload(&b, &type, &len);
	for (size_t cut = 0; cut < len; cut++)
		assert_int_equal(proto_get_hello(p, cut, &h2), -1);
	pbuf_free(&b);
}

/* A string length pointing past the end, an unknown status, bad nsec. */
static void
test_hostile_fields(void **state)
{
	uint8_t huge_str[4 + 4] = { 0xfe, 0xff, 0xff, 0x7f, 'a', 'b', 'c', 'd' };
	struct msg_fail f;
	struct msg_result r2;
	struct pbuf b = { 0 };
	struct msg_result r = { .id = 1, .status = 99, .output = "", .output_len = 0 };
	const uint8_t *p;
	uint8_t type;
	size_t len;

	(void)state;
	assert_int_equal(proto_get_fail(huge_str, sizeof huge_str, &f), -1);

	proto_put_result(&b, &r);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_result(p, len, &r2), -1);
	b.len = 0;
	r.status = TASK_OK;
	r.started_nsec = 1000000000;
	proto_put_result(&b, &r);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_result(p, len, &r2), -1);
	b.len = 0;
	r.started_nsec = 0;
	r.flags = 2;            /* a flag this version does not know */
	proto_put_result(&b, &r);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_result(p, len, &r2), -1);
	b.len = 0;
	r.flags = 0;
	/* Durations must be finite and not negative: a NaN would print as
	 * invalid JSON and poison the batch size's mean. */
	{
		const double bad[] = { NAN, INFINITY, -INFINITY, -1.0 };

		for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
			for (int which = 0; which < 2; which++) {
				r.wall_s = which == 0 ? bad[i] : 0.5;
				r.cpu_s = which == 1 ? bad[i] : 0.5;
				b.len = 0;
				proto_put_result(&b, &r);
				p = frame_payload(&b, &type, &len);
				assert_int_equal(proto_get_result(p, len, &r2), -1);
			}
		}
		r.wall_s = r.cpu_s = 0;
		b.len = 0;
	}
	r.output = NULL;        /* a result always has an output */
	proto_put_result(&b, &r);
	p = frame_payload(&b, &type, &len);
	assert_int_equal(proto_get_result(p, len, &r2), 0);
	assert_int_equal(r2.output_len, 0);
	pbuf_free(&b);
}

/* Frames arrive a byte at a time and in bulk; both reassemble. */
static void
test_pconn_framing(void **state)
{
	int sv[2];
	struct pconn c;
	struct pbuf b = { 0 };
	struct msg_log l = { .priority = LOG_INFO, .text = "line one" }, l2;
	struct msg_cancel cm = { .id = 99 }, c2;
	const uint8_t *p;
	uint8_t type;
	size_t len;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	proto_put_log(&b, &l);
	proto_put_cancel(&b, &cm);
	pconn_init(&c, sv[0]);

	for (size_t i = 0; i < b.len; i++) {
		assert_int_equal(write(sv[1], b.data + i, 1), 1);
		assert_true(pconn_read(&c) == 1);
		int rc = pconn_next(&c, &type, &p, &len);
		if (rc == 1) {
			if (type == MSG_LOG) {
				assert_int_equal(proto_get_log(p, len, &l2), 0);
				assert_string_equal(l2.text, "line one");
				proto_log_free(&l2);
			} else {
				assert_int_equal(type, MSG_CANCEL);
				assert_int_equal(i, b.len - 1);
				assert_int_equal(proto_get_cancel(p, len, &c2), 0);
				assert_int_equal(c2.id, 99);
			}
		}
	}

	/* Both at once: two frames from one read. */
	assert_int_equal(write(sv[1], b.data, b.len), (ssize_t)b.len);
	assert_true(pconn_read(&c) > 0);
	assert_int_equal(pconn_next(&c, &type, &p, &len), 1);
	assert_int_equal(type, MSG_LOG);
	assert_int_equal(pconn_next(&c, &type, &p, &len), 1);
	assert_int_equal(type, MSG_CANCEL);
	assert_int_equal(pconn_next(&c, &type, &p, &len), 0);

	/* EOF reads as 0. */
	close(sv[1]);
	assert_int_equal(pconn_read(&c), 0);
	pconn_free(&c);
	close(sv[0]);
	pbuf_free(&b);
}

static void
test_pconn_rejects_bad_lengths(void **state)
{
	int sv[2];
	struct pconn c;
	const uint8_t *p;
	uint8_t type;
	size_t len;
	const uint8_t oversize[5] = { 0xff, 0xff, 0xff, 0x7f, MSG_LOG };
	const uint8_t empty[4] = { 0, 0, 0, 0 };

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pconn_init(&c, sv[0]);
	assert_int_equal(write(sv[1], oversize, sizeof oversize), (ssize_t)sizeof oversize);
	assert_true(pconn_read(&c) > 0);
	errno = 0;
	assert_int_equal(pconn_next(&c, &type, &p, &len), -1);
	assert_int_equal(errno, EMSGSIZE);
	pconn_free(&c);

	pconn_init(&c, sv[0]);
	assert_int_equal(write(sv[1], empty, sizeof empty), (ssize_t)sizeof empty);
	assert_true(pconn_read(&c) > 0);
	assert_int_equal(pconn_next(&c, &type, &p, &len), -1);
	assert_int_equal(errno, EPROTO);
	pconn_free(&c);
	close(sv[0]);
	close(sv[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hello_roundtrip),
		cmocka_unit_test(test_tasks_and_result_roundtrip),
		cmocka_unit_test(test_tasks_hostile),
		cmocka_unit_test(test_claim_word),
		cmocka_unit_test(test_small_messages_roundtrip),
		cmocka_unit_test(test_spawn_roundtrip),
		cmocka_unit_test(test_truncated_and_padded),
		cmocka_unit_test(test_hostile_fields),
		cmocka_unit_test(test_pconn_framing),
		cmocka_unit_test(test_pconn_rejects_bad_lengths),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
