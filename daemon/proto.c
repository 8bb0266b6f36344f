/*
 * proto.c - the protocol between jobrund and its jobrund-worker processes.
 *
 * A worker serves one job: the daemon sends HELLO (the job, the plugin,
 * its settings), the worker answers READY or FAIL, then the daemon sends
 * TASKS frames, each a batch of tasks numbered in one sequence per worker,
 * and the worker answers each task it runs with a RESULT, sending LOG
 * lines in between.  Which of the tasks it holds a worker may start is
 * decided by the claim word in the memory block it shares with the daemon
 * (struct proto_shm, see sup.c), so that the daemon can take back those
 * it has not started.  CANCEL asks the worker to stop a task; ACK tells it
 * that the daemon has taken what a task wrote to stdout/stderr.  SPAWN
 * and SPAWNED are the daemon's requests to the worker factory and their
 * answers (factory.c, worker_factory.c).
 *
 * Frames are length-prefixed (u32 little endian, then a type byte) so a
 * reader never needs more than one frame in memory, and a frame larger
 * than PROTO_MAX_FRAME marks the stream as corrupt instead of growing the
 * daemon.  Fields are fixed-width little-endian integers, IEEE doubles and
 * strings written as u32 length plus bytes (0xffffffff for "none").
 * Decoders check every length against what is left: a truncated or
 * hostile frame is an error, never an overread.
 */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jobrund.h"

#define STR_NONE 0xffffffffu

/* Decoded strings are malloc'd but held as const char *. */
static void
free_str(const char *s)
{
	free((void *)(uintptr_t)s);
}

/* --- writing ---------------------------------------------------------- */

static void
pbuf_reserve(struct pbuf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more)
		cap *= 2;
	b->data = xrealloc(b->data, cap);
	b->cap = cap;
}

void
pbuf_free(struct pbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/* Fixed-width fields, little endian: a byte-order swap and one copy. */
static void
put_u32(struct pbuf *b, uint32_t v)
{
	uint32_t le = htole32(v);

	pbuf_reserve(b, 4);
	memcpy(b->data + b->len, &le, 4);
	b->len += 4;
}

static void
put_u64(struct pbuf *b, uint64_t v)
{
	uint64_t le = htole64(v);

	pbuf_reserve(b, 8);
	memcpy(b->data + b->len, &le, 8);
	b->len += 8;
}

static void
put_f64(struct pbuf *b, double d)
{
	uint64_t v;

	memcpy(&v, &d, sizeof v);
	put_u64(b, v);
}

static void
put_bytes(struct pbuf *b, const char *s, size_t len)
{
	if (s == NULL) {
		put_u32(b, STR_NONE);
		return;
	}
	put_u32(b, (uint32_t)len);
	pbuf_reserve(b, len);
	memcpy(b->data + b->len, s, len);
	b->len += len;
}

static void
put_str(struct pbuf *b, const char *s)
{
	put_bytes(b, s, s ? strlen(s) : 0);
}

/* Start a frame; returns where its length goes, for frame_end. */
static size_t
frame_begin(struct pbuf *b, enum proto_type type)
{
	size_t at = b->len;

	put_u32(b, 0);
	pbuf_reserve(b, 1);
	b->data[b->len++] = (uint8_t)type;
	return at;
}

static void
frame_end(struct pbuf *b, size_t at)
{
	uint32_t len = (uint32_t)(b->len - at - 4);

	for (int i = 0; i < 4; i++)
		b->data[at + (size_t)i] = (uint8_t)(len >> (8 * i));
}

void
proto_put_hello(struct pbuf *b, const struct msg_hello *m)
{
	size_t at = frame_begin(b, MSG_HELLO);

	put_u32(b, m->version);
	put_str(b, m->job);
	put_str(b, m->plugin_dir);
	put_str(b, m->plugin);
	put_str(b, m->settings);
	put_str(b, m->config_file);
	put_u32(b, (uint32_t)m->log_level);
	for (int i = 0; i < JR_RLIMITS; i++)
		put_u64(b, (uint64_t)m->rlimit[i]);
	put_str(b, m->user);
	put_u32(b, m->uid);
	put_u32(b, m->gid);
	put_u32(b, m->set_gid ? 1 : 0);
	put_str(b, m->cwd);
	frame_end(b, at);
}

void
proto_put_ready(struct pbuf *b, const struct msg_ready *m)
{
	size_t at = frame_begin(b, MSG_READY);

	put_u32(b, m->version);
	put_u32(b, (uint32_t)m->pid);
	frame_end(b, at);
}

void
proto_put_fail(struct pbuf *b, const struct msg_fail *m)
{
	size_t at = frame_begin(b, MSG_FAIL);

	put_str(b, m->message);
	frame_end(b, at);
}

void
proto_put_spawn(struct pbuf *b, const struct msg_spawn *m)
{
	size_t at = frame_begin(b, MSG_SPAWN);

	put_u64(b, m->seq);
	put_str(b, m->job);
	put_u32(b, m->nenv);
	for (uint32_t i = 0; i < m->nenv; i++)
		put_str(b, m->env[i]);
	frame_end(b, at);
}

void
proto_put_spawned(struct pbuf *b, const struct msg_spawned *m)
{
	size_t at = frame_begin(b, MSG_SPAWNED);

	put_u64(b, m->seq);
	put_u32(b, (uint32_t)m->pid);
	put_u32(b, (uint32_t)m->error);
	frame_end(b, at);
}

size_t
proto_tasks_begin(struct pbuf *b, uint64_t first, double timeout_s)
{
	size_t at = frame_begin(b, MSG_TASKS);

	put_u64(b, first);
	put_f64(b, timeout_s);
	put_u32(b, 0);          /* the count: proto_tasks_end */
	return at;
}

void
proto_tasks_add(struct pbuf *b, const char *input)
{
	put_str(b, input);
}

void
proto_tasks_end(struct pbuf *b, size_t at, uint32_t count)
{
	size_t c = at + 4 + 1 + 8 + 8;  /* past length, type, first, timeout */

	for (int i = 0; i < 4; i++)
		b->data[c + (size_t)i] = (uint8_t)(count >> (8 * i));
	frame_end(b, at);
}

void
proto_put_tasks(struct pbuf *b, const struct msg_tasks *m)
{
	size_t at = proto_tasks_begin(b, m->first, m->timeout_s);

	for (uint32_t i = 0; i < m->count; i++)
		proto_tasks_add(b, m->inputs[i]);
	proto_tasks_end(b, at, m->count);
}

/* CANCEL and ACK: a frame of one task id. */
static void
put_id_frame(struct pbuf *b, enum proto_type type, uint64_t id)
{
	size_t at = frame_begin(b, type);

	put_u64(b, id);
	frame_end(b, at);
}

void
proto_put_cancel(struct pbuf *b, const struct msg_cancel *m)
{
	put_id_frame(b, MSG_CANCEL, m->id);
}

void
proto_put_ack(struct pbuf *b, const struct msg_ack *m)
{
	put_id_frame(b, MSG_ACK, m->id);
}

size_t
proto_result_size(const struct msg_result *m)
{
	return 4 + 1 + 8 + 4 + 4 + 4 + (m->output ? m->output_len : 0) + 4 +
	       (m->error ? m->error_len : 0) + 8 + 4 + 8 + 8;
}

void
proto_put_result(struct pbuf *b, const struct msg_result *m)
{
	size_t at;

	pbuf_reserve(b, proto_result_size(m));
	at = frame_begin(b, MSG_RESULT);
	put_u64(b, m->id);
	put_u32(b, m->status);
	put_u32(b, m->flags);
	put_bytes(b, m->output ? m->output : "", m->output ? m->output_len : 0);
	put_bytes(b, m->error, m->error_len);
	put_u64(b, (uint64_t)m->started_sec);
	put_u32(b, (uint32_t)m->started_nsec);
	put_f64(b, m->wall_s);
	put_f64(b, m->cpu_s);
	frame_end(b, at);
}

void
proto_put_log(struct pbuf *b, const struct msg_log *m)
{
	size_t at = frame_begin(b, MSG_LOG);

	put_u32(b, (uint32_t)m->priority);
	put_str(b, m->text);
	frame_end(b, at);
}

/* --- reading ---------------------------------------------------------- */

struct reader {
	const uint8_t *p;
	size_t left;
	bool bad;
};

static bool
take(struct reader *r, size_t n)
{
	if (r->bad || r->left < n) {
		r->bad = true;
		return false;
	}
	return true;
}

static uint32_t
get_u32(struct reader *r)
{
	uint32_t v;

	if (!take(r, 4))
		return 0;
	memcpy(&v, r->p, 4);
	r->p += 4;
	r->left -= 4;
	return le32toh(v);
}

static uint64_t
get_u64(struct reader *r)
{
	uint64_t v;

	if (!take(r, 8))
		return 0;
	memcpy(&v, r->p, 8);
	r->p += 8;
	r->left -= 8;
	return le64toh(v);
}

static double
get_f64(struct reader *r)
{
	uint64_t v = get_u64(r);
	double d;

	memcpy(&d, &v, sizeof d);
	return d;
}

/* A malloc'd, NUL-terminated copy, or NULL for "none" (or on error: check
 * r->bad).  LEN, when given, receives the byte count. */
static char *
get_str(struct reader *r, size_t *len)
{
	uint32_t n = get_u32(r);
	char *s;

	if (len)
		*len = 0;
	if (r->bad || n == STR_NONE)
		return NULL;
	if (!take(r, n))
		return NULL;
	s = xmalloc((size_t)n + 1);
	memcpy(s, r->p, n);
	s[n] = '\0';
	r->p += n;
	r->left -= n;
	if (len)
		*len = n;
	return s;
}

/* A decoder's verdict: trailing bytes are as wrong as missing ones. */
static int
finish(struct reader *r)
{
	if (r->bad || r->left != 0) {
		errno = EPROTO;
		return -1;
	}
	return 0;
}

int
proto_get_hello(const uint8_t *p, size_t len, struct msg_hello *m)
{
	struct reader r = { p, len, false };

	memset(m, 0, sizeof *m);
	m->version = get_u32(&r);
	m->job = get_str(&r, NULL);
	m->plugin_dir = get_str(&r, NULL);
	m->plugin = get_str(&r, NULL);
	m->settings = get_str(&r, NULL);
	m->config_file = get_str(&r, NULL);
	m->log_level = (int32_t)get_u32(&r);
	for (int i = 0; i < JR_RLIMITS; i++)
		m->rlimit[i] = (int64_t)get_u64(&r);
	m->user = get_str(&r, NULL);
	m->uid = get_u32(&r);
	m->gid = get_u32(&r);
	m->set_gid = get_u32(&r) != 0;
	m->cwd = get_str(&r, NULL);
	if (m->job == NULL || m->plugin_dir == NULL || m->plugin == NULL)
		r.bad = true;
	if (finish(&r) == -1) {
		proto_hello_free(m);
		errno = EPROTO;
		return -1;
	}
	return 0;
}

void
proto_hello_free(struct msg_hello *m)
{
	free_str(m->job);
	free_str(m->plugin_dir);
	free_str(m->plugin);
	free_str(m->settings);
	free_str(m->config_file);
	free_str(m->user);
	free_str(m->cwd);
	memset(m, 0, sizeof *m);
}

int
proto_get_ready(const uint8_t *p, size_t len, struct msg_ready *m)
{
	struct reader r = { p, len, false };

	m->version = get_u32(&r);
	m->pid = (int32_t)get_u32(&r);
	return finish(&r);
}

int
proto_get_fail(const uint8_t *p, size_t len, struct msg_fail *m)
{
	struct reader r = { p, len, false };

	m->message = get_str(&r, NULL);
	if (m->message == NULL)
		r.bad = true;
	if (finish(&r) == -1) {
		proto_fail_free(m);
		errno = EPROTO;
		return -1;
	}
	return 0;
}

void
proto_fail_free(struct msg_fail *m)
{
	free_str(m->message);
	m->message = NULL;
}

int
proto_get_spawn(const uint8_t *p, size_t len, struct msg_spawn *m)
{
	struct reader r = { p, len, false };
	uint32_t nenv;
	size_t bytes;
	char *str;

	memset(m, 0, sizeof *m);
	m->seq = get_u64(&r);
	m->job = get_str(&r, NULL);
	nenv = get_u32(&r);
	/* Each variable takes at least its 4-byte length: a count the
	 * frame cannot hold is a lie, not an allocation to make. */
	if (m->job == NULL || nenv > r.left / 4)
		r.bad = true;
	if (r.bad) {
		proto_spawn_free(m);
		errno = EPROTO;
		return -1;
	}
	/* The array and its strings in one block: the strings need at most
	 * what is left of the frame, plus a NUL each. */
	bytes = ((size_t)nenv + 1) * sizeof *m->env;
	m->env = xmalloc(bytes + r.left + nenv);
	str = (char *)(m->env + nenv + 1);
	for (uint32_t i = 0; i < nenv && !r.bad; i++) {
		uint32_t n = get_u32(&r);

		if (n == STR_NONE || !take(&r, n) || memchr(r.p, '\0', n)) {
			r.bad = true;
			break;
		}
		memcpy(str, r.p, n);
		str[n] = '\0';
		m->env[i] = str;
		str += n + 1;
		r.p += n;
		r.left -= n;
	}
	m->env[nenv] = NULL;
	m->nenv = nenv;
	if (finish(&r) == -1) {
		proto_spawn_free(m);
		errno = EPROTO;
		return -1;
	}
	return 0;
}

void
proto_spawn_free(struct msg_spawn *m)
{
	free_str(m->job);
	free((void *)(uintptr_t)m->env);
	memset(m, 0, sizeof *m);
}

int
proto_get_spawned(const uint8_t *p, size_t len, struct msg_spawned *m)
{
	struct reader r = { p, len, false };

	m->seq = get_u64(&r);
	m->pid = (int32_t)get_u32(&r);
	m->error = (int32_t)get_u32(&r);
	return finish(&r);
}

/* A string that stays in the frame: its bytes and length (*S NULL for
 * "none"). */
static void
get_view(struct reader *r, const char **s, size_t *len)
{
	uint32_t n = get_u32(r);

	*s = NULL;
	*len = 0;
	if (r->bad || n == STR_NONE)
		return;
	if (!take(r, n))
		return;
	*s = (const char *)r->p;
	*len = n;
	r->p += n;
	r->left -= n;
}

int
proto_get_tasks(const uint8_t *p, size_t len, struct msg_tasks *m)
{
	struct reader r = { p, len, false }, body;
	size_t bytes = 0;
	char *strs;

	memset(m, 0, sizeof *m);
	m->first = get_u64(&r);
	m->timeout_s = get_f64(&r);
	m->count = get_u32(&r);
	if (!(m->timeout_s >= 0) ||     /* also rejects NaN */
	    m->count == 0 || m->count > PROTO_MAX_BATCH ||
	    m->first > UINT64_MAX - m->count)
		r.bad = true;
	/* First pass: check every input and count the bytes they need. */
	body = r;
	for (uint32_t i = 0; i < m->count && !r.bad; i++) {
		const char *s;
		size_t n;

		get_view(&r, &s, &n);
		if (s != NULL)
			bytes += n + 1;
	}
	if (finish(&r) == -1)
		return -1;
	/* Second pass: one block for the pointers and the strings. */
	m->inputs = xmalloc(m->count * sizeof *m->inputs + bytes);
	strs = (char *)(m->inputs + m->count);
	for (uint32_t i = 0; i < m->count; i++) {
		const char *s;
		size_t n;

		get_view(&body, &s, &n);
		if (s == NULL) {
			m->inputs[i] = NULL;
			continue;
		}
		memcpy(strs, s, n);
		strs[n] = '\0';
		m->inputs[i] = strs;
		strs += n + 1;
	}
	return 0;
}

void
proto_tasks_free(struct msg_tasks *m)
{
	free(m->inputs);
	m->inputs = NULL;
}

int
proto_get_ack(const uint8_t *p, size_t len, struct msg_ack *m)
{
	struct reader r = { p, len, false };

	m->id = get_u64(&r);
	return finish(&r);
}

int
proto_get_cancel(const uint8_t *p, size_t len, struct msg_cancel *m)
{
	struct reader r = { p, len, false };

	m->id = get_u64(&r);
	return finish(&r);
}

/* A duration a result may carry: finite and not negative (a NaN would
 * print as invalid JSON and poison the means derived from it). */
static bool
seconds_ok(double s)
{
	return s >= 0 && isfinite(s);
}

int
proto_get_result(const uint8_t *p, size_t len, struct msg_result *m)
{
	struct reader r = { p, len, false };

	memset(m, 0, sizeof *m);
	m->id = get_u64(&r);
	m->status = get_u32(&r);
	m->flags = get_u32(&r);
	get_view(&r, &m->output, &m->output_len);
	get_view(&r, &m->error, &m->error_len);
	m->started_sec = (int64_t)get_u64(&r);
	m->started_nsec = (int32_t)get_u32(&r);
	m->wall_s = get_f64(&r);
	m->cpu_s = get_f64(&r);
	if (m->output == NULL || m->status > TASK_SKIPPED ||
	    (m->flags & ~PROTO_RESULT_OUTPUT) != 0 ||
	    m->started_nsec < 0 || m->started_nsec >= 1000000000 ||
	    !seconds_ok(m->wall_s) || !seconds_ok(m->cpu_s))
		r.bad = true;
	if (finish(&r) == -1) {
		memset(m, 0, sizeof *m);
		return -1;
	}
	return 0;
}

int
proto_get_log(const uint8_t *p, size_t len, struct msg_log *m)
{
	struct reader r = { p, len, false };

	m->priority = (int32_t)get_u32(&r);
	m->text = get_str(&r, NULL);
	if (m->text == NULL)
		r.bad = true;
	if (finish(&r) == -1) {
		proto_log_free(m);
		errno = EPROTO;
		return -1;
	}
	return 0;
}

void
proto_log_free(struct msg_log *m)
{
	free_str(m->text);
	m->text = NULL;
}

/* --- connections ------------------------------------------------------ */

void
pconn_init(struct pconn *c, int fd)
{
	memset(c, 0, sizeof *c);
	c->fd = fd;
}

void
pconn_free(struct pconn *c)
{
	free(c->rbuf);
	pbuf_free(&c->out);
	c->rbuf = NULL;
	c->rlen = c->rcap = c->rskip = c->out_off = 0;
}

ssize_t
pconn_read(struct pconn *c)
{
	ssize_t n;

	/* Drop frames already handed out, then make room. */
	if (c->rskip > 0) {
		memmove(c->rbuf, c->rbuf + c->rskip, c->rlen - c->rskip);
		c->rlen -= c->rskip;
		c->rskip = 0;
	}
	if (c->rcap - c->rlen < 4096) {
		c->rcap = c->rcap ? c->rcap * 2 : 8192;
		c->rbuf = xrealloc(c->rbuf, c->rcap);
	}
	do
		n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
	while (n == -1 && errno == EINTR);
	if (n > 0)
		c->rlen += (size_t)n;
	return n;
}

int
proto_next_frame(const uint8_t *buf, size_t len, size_t *off, uint8_t *type,
		 const uint8_t **payload, size_t *plen)
{
	const uint8_t *p = buf + *off;
	size_t avail = len - *off;
	uint32_t flen;

	if (avail < 4)
		return 0;
	flen = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
	if (flen == 0) {
		errno = EPROTO;
		return -1;
	}
	if (flen > PROTO_MAX_FRAME) {
		errno = EMSGSIZE;
		return -1;
	}
	if (avail - 4 < flen)
		return 0;
	*type = p[4];
	*payload = p + 5;
	*plen = flen - 1;
	*off += 4 + (size_t)flen;
	return 1;
}

int
pconn_next(struct pconn *c, uint8_t *type, const uint8_t **payload, size_t *len)
{
	if (c->rbuf == NULL)
		return 0;
	return proto_next_frame(c->rbuf, c->rlen, &c->rskip, type, payload, len);
}

int
pconn_flush(struct pconn *c)
{
	while (c->out_off < c->out.len) {
		ssize_t n = write(c->fd, c->out.data + c->out_off,
				  c->out.len - c->out_off);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 1;
			return -1;
		}
		c->out_off += (size_t)n;
	}
	c->out.len = 0;
	c->out_off = 0;
	return 0;
}
