/*
 * result.c - task results: their status names, their JSON form (the one
 * shape design.md promises for --once, `jobrunctl run --wait --json` and
 * `jobrunctl show --json`) and a one-line summary for the log.
 *
 * JSON is written by hand: it is one flat object of known keys, and the
 * only care needed is escaping strings, which json_write_string does
 * (control characters, quotes, backslashes; invalid UTF-8 is replaced so
 * that a plugin's binary output never produces an unparsable line).
 */
#include "config.h"

#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "jobrund.h"

static const char *const status_names[] = {
	[TASK_OK] = "ok", [TASK_FAILED] = "failed", [TASK_TIMEOUT] = "timeout",
	[TASK_CRASHED] = "crashed", [TASK_KILLED] = "killed",
	[TASK_CANCELLED] = "cancelled", [TASK_SKIPPED] = "skipped",
};

const char *
status_name(enum task_status st)
{
	if ((size_t)st >= sizeof status_names / sizeof status_names[0])
		return "unknown";
	return status_names[st];
}

int
status_from_name(const char *name)
{
	for (size_t i = 0; i < sizeof status_names / sizeof status_names[0]; i++)
		if (strcmp(name, status_names[i]) == 0)
			return (int)i;
	return -1;
}

/* Length of a valid UTF-8 sequence at P (at most LEN bytes), or 0. */
static size_t
utf8_seq_len(const unsigned char *p, size_t len)
{
	size_t n;
	unsigned int cp;

	if (p[0] < 0x80)
		return 1;
	if ((p[0] & 0xe0) == 0xc0) {
		n = 2; cp = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		n = 3; cp = p[0] & 0x0f;
	} else if ((p[0] & 0xf8) == 0xf0) {
		n = 4; cp = p[0] & 0x07;
	} else {
		return 0;
	}
	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	/* Overlong forms, surrogates and values past U+10FFFF are invalid. */
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
	    (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

void
json_write_string(FILE *fp, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	fputc('"', fp);
	while (i < len) {
		unsigned char c = p[i];
		size_t n;

		switch (c) {
		case '"': fputs("\\\"", fp); i++; continue;
		case '\\': fputs("\\\\", fp); i++; continue;
		case '\n': fputs("\\n", fp); i++; continue;
		case '\r': fputs("\\r", fp); i++; continue;
		case '\t': fputs("\\t", fp); i++; continue;
		}
		if (c < 0x20 || c == 0x7f) {
			fprintf(fp, "\\u%04x", c);
			i++;
			continue;
		}
		n = utf8_seq_len(p + i, len - i);
		if (n == 0) {
			fputs("\\ufffd", fp);
			i++;
			continue;
		}
		fwrite(p + i, 1, n, fp);
		i += n;
	}
	fputc('"', fp);
}

static void
write_cstr(FILE *fp, const char *s)
{
	json_write_string(fp, s, strlen(s));
}

static void
format_time(char *buf, size_t len, const struct timespec *ts)
{
	struct tm tm;

	gmtime_r(&ts->tv_sec, &tm);
	/* Years past 9999 do not happen; the cast tells the compiler so. */
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
		 (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100, tm.tm_mday % 100,
		 tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100,
		 (ts->tv_nsec / 1000000) % 1000);
}

void
result_write_json(FILE *fp, const struct task_result *r)
{
	char when[40];

	fputs("{\"job\":", fp);
	write_cstr(fp, r->job);
	fprintf(fp, ",\"run\":%" PRIu64 ",\"index\":%zu,\"attempt\":%d,\"input\":",
		r->run, r->index, r->attempt > 0 ? r->attempt : 1);
	if (r->input)
		write_cstr(fp, r->input);
	else
		fputs("null", fp);
	fprintf(fp, ",\"status\":\"%s\",\"output\":", status_name(r->status));
	json_write_string(fp, r->output ? r->output : "", r->output ? r->output_len : 0);
	if (r->error) {
		fputs(",\"error\":", fp);
		write_cstr(fp, r->error);
	}
	if (r->worker_output) {
		fputs(",\"worker_output\":", fp);
		json_write_string(fp, r->worker_output, r->worker_output_len);
	}
	if (r->worker_output_dropped)
		fprintf(fp, ",\"worker_output_dropped\":%zu", r->worker_output_dropped);
	fprintf(fp, ",\"mode\":\"%s\",\"pid\":%ld", mode_name(r->mode), (long)r->pid);
	if (r->status == TASK_CRASHED || r->status == TASK_KILLED ||
	    r->status == TASK_TIMEOUT) {
		if (r->signal > 0) {
			fprintf(fp, ",\"signal\":%d,\"signal_name\":\"SIG%s\"", r->signal,
				sigabbrev_np(r->signal) ? sigabbrev_np(r->signal) : "?");
			if (r->core_dumped)
				fputs(",\"core_dumped\":true", fp);
		}
		if (r->exit_code >= 0)
			fprintf(fp, ",\"exit_code\":%d", r->exit_code);
	}
	format_time(when, sizeof when, &r->started);
	fprintf(fp, ",\"started\":\"%s\",\"wall_s\":%.6f,\"cpu_s\":%.6f}\n",
		when, r->wall_s, r->cpu_s);
}

char *
result_summary(const struct task_result *r)
{
	char *out, *s;
	size_t olen = r->output ? strlen(r->output) : 0;
	const int max = 200;    /* keep log lines readable */
	char attempt[32];

	snprintf(attempt, sizeof attempt, ", attempt %d", r->attempt);

	out = xasprintf("%.*s%s", olen > (size_t)max ? max : (int)olen,
			r->output ? r->output : "", olen > (size_t)max ? "..." : "");
	for (char *p = out; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	s = xasprintf("job %s run %" PRIu64 " task %zu%s%s: %s%s%s%s%s (%s, pid %ld, %.3fs%s)",
		      r->job, r->run, r->index, r->input ? " input=" : "",
		      r->input ? r->input : "", status_name(r->status),
		      *out ? " output=" : "", out,
		      r->error ? " error=" : "", r->error ? r->error : "",
		      mode_name(r->mode), (long)r->pid, r->wall_s,
		      r->attempt > 1 ? attempt : "");
	free(out);
	return s;
}

void
result_clear_output(struct task_result *r)
{
	if (r->output != r->output_small)
		free(r->output);
	r->output = NULL;
}

void
result_set_output(struct task_result *r, const char *data, size_t len)
{
	result_clear_output(r);
	r->output = len < sizeof r->output_small ? r->output_small : xmalloc(len + 1);
	memcpy(r->output, data, len);
	r->output[len] = '\0';
	r->output_len = len;
}

void
result_adopt_output(struct task_result *r, char *buf, size_t len)
{
	result_clear_output(r);
	r->output = buf;
	r->output_len = len;
}

void
result_move_output(struct task_result *to, struct task_result *from)
{
	if (from->output == from->output_small)
		result_set_output(to, from->output, from->output_len);
	else
		result_adopt_output(to, from->output, from->output_len);
	from->output = NULL;
	from->output_len = 0;
}

void
result_clear(struct task_result *r)
{
	result_clear_output(r);
	free(r->error);
	free(r->worker_output);
	r->output = r->error = r->worker_output = NULL;
	r->output_len = r->worker_output_len = r->worker_output_dropped = 0;
}
