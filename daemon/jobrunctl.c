/*
 * jobrunctl.c - the control client: steer a running jobrund through its
 * control socket.
 *
 *   jobrunctl [-s SOCKET] [--json] COMMAND [ARGS]
 *
 * Commands: status, show JOB, run JOB [--wait], cancel JOB, kill JOB
 * [-SIGNAL], workers [JOB], history JOB [-n N], reload, version.  It
 * sends one request (ctl.c describes the protocol), reads the replies and
 * prints them: tables for people, or with --json one JSON document (and
 * for `run --wait` one JSON line per task result, in the result shape of
 * design.md).
 *
 * Exit status: 0 on success, 1 when jobrund refused or failed the command
 * (or cannot be reached), 2 on a usage error, 3 when `run --wait` saw a
 * task that did not succeed.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "jobrund.h"

#define DEFAULT_SOCKET  JR_RUN_DIR "/jobrund.sock"
#define REPLY_TIMEOUT   120     /* seconds, except for run --wait */
#define MAX_LINE        (1024u * 1024 * 1024)
#define JSON_FLAGS      (JSON_COMPACT | JSON_REAL_PRECISION(9))

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_TASK_FAILED = 3 };

static const char *socket_path = DEFAULT_SOCKET;
static bool json_out;

static void
usage(FILE *fp)
{
	fprintf(fp,
"usage: jobrunctl [-s SOCKET] [--json] COMMAND [ARGS]\n"
"\n"
"commands:\n"
"  status               jobs, schedules, next and last runs\n"
"  show JOB             a job's definition, state and last run's results\n"
"  run JOB [--wait]     start a run; --wait prints results as tasks finish\n"
"  cancel JOB           cancel the job's active runs\n"
"  kill JOB [-SIGNAL]   signal the job's worker processes (default TERM;\n"
"                       thread mode: cancel)\n"
"  workers [JOB]        worker processes and threads\n"
"  history JOB [-n N]   the job's last N runs (default 10)\n"
"  reload               reload the configuration, report its errors\n"
"  version              jobrunctl's and jobrund's versions\n"
"\n"
"  -s, --socket SOCKET  control socket (default " DEFAULT_SOCKET ")\n"
"  -j, --json           JSON output\n"
"  -h, --help           this help\n"
"  -V, --version        jobrunctl's version only\n"
"\n"
"exit status: 0 ok, 1 refused or failed, 2 usage error, 3 a task failed (run --wait)\n");
}

static void
vwarnx_(const char *fmt, va_list ap) JR_PRINTFLIKE(1, 0);

static void
vwarnx_(const char *fmt, va_list ap)
{
	fputs("jobrunctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs("\n", stderr);
}

static void
warnx_(const char *fmt, ...) JR_PRINTFLIKE(1, 2);

static void
warnx_(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vwarnx_(fmt, ap);
	va_end(ap);
}

static int
usage_error(const char *fmt, ...) JR_PRINTFLIKE(1, 2);

static int
usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vwarnx_(fmt, ap);
	va_end(ap);
	usage(stderr);
	return EXIT_USAGE;
}

/* --- the connection --------------------------------------------------- */

struct conn {
	int fd;
	char *buf;
	size_t len, cap;
};

static int
conn_open(struct conn *c)
{
	struct sockaddr_un sun;

	memset(c, 0, sizeof *c);
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	if (strlen(socket_path) >= sizeof sun.sun_path) {
		warnx_("%s: socket path too long", socket_path);
		return -1;
	}
	memcpy(sun.sun_path, socket_path, strlen(socket_path) + 1);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd == -1) {
		warnx_("socket: %s", strerror(errno));
		return -1;
	}
	if (connect(c->fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		int e = errno;
		warnx_("cannot connect to %s: %s%s", socket_path, strerror(e),
		       e == ENOENT || e == ECONNREFUSED ? " (is jobrund running?)" :
		       e == EACCES ? " (root or the control group only)" : "");
		close(c->fd);
		return -1;
	}
	return 0;
}

static int
conn_send(struct conn *c, json_t *req)
{
	char *text = json_dumps(req, JSON_FLAGS);
	size_t len, off = 0;

	if (text == NULL) {
		warnx_("cannot encode the request");
		return -1;
	}
	len = strlen(text);
	text[len] = '\n';       /* json_dumps's NUL becomes the newline */
	len++;
	while (off < len) {
		ssize_t n = send(c->fd, text + off, len - off, MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			warnx_("%s: write: %s", socket_path, strerror(errno));
			free(text);
			return -1;
		}
		off += (size_t)n;
	}
	free(text);
	return 0;
}

/* The next message; NULL (after saying why) at EOF or on error.
 * TIMEOUT in seconds, or -1 for none. */
static json_t *
conn_recv(struct conn *c, int timeout)
{
	for (;;) {
		char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		json_error_t jerr;
		ssize_t n;
		int rc;

		if (nl) {
			size_t linelen = (size_t)(nl - c->buf);
			json_t *m = json_loadb(c->buf, linelen, 0, &jerr);
			c->len -= linelen + 1;
			memmove(c->buf, nl + 1, c->len);
			if (m == NULL || !json_is_object(m)) {
				warnx_("jobrund sent a malformed message: %s", m ? "not an object" :
				       jerr.text);
				json_decref(m);
				return NULL;
			}
			return m;
		}
		if (c->len >= MAX_LINE) {
			warnx_("jobrund sent a message longer than %u bytes", MAX_LINE);
			return NULL;
		}
		rc = poll(&pfd, 1, timeout < 0 ? -1 : timeout * 1000);
		if (rc == -1 && errno == EINTR)
			continue;
		if (rc == 0) {
			warnx_("no reply from jobrund within %ds", timeout);
			return NULL;
		}
		if (c->cap - c->len < 65536) {
			c->cap = c->cap ? c->cap * 2 : 65536 * 2;
			c->buf = xrealloc(c->buf, c->cap);
		}
		n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
		if (n > 0) {
			c->len += (size_t)n;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		if (n == 0)
			warnx_("jobrund closed the connection before replying");
		else
			warnx_("%s: read: %s", socket_path, strerror(errno));
		return NULL;
	}
}

static void
conn_close(struct conn *c)
{
	close(c->fd);
	free(c->buf);
}

/* --- formatting ------------------------------------------------------- */

static const char *
jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "";
}

static json_int_t
jint(json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

static double
jnum(json_t *o, const char *key)
{
	return json_number_value(json_object_get(o, key));
}

/* "45ms", "3.2s", "2m13s", "1h05m", "3d04h". */
static void
fmt_duration(char *buf, size_t len, double s)
{
	if (s < 0)
		s = 0;
	if (s < 1)
		snprintf(buf, len, "%.0fms", s * 1000);
	else if (s < 60)
		snprintf(buf, len, "%.1fs", s);
	else if (s < 3600)
		snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
	else
		snprintf(buf, len, "%dd%02dh", (int)(s / 86400), (int)s % 86400 / 3600);
}

static void
fmt_bytes(char *buf, size_t len, double b)
{
	const char *units = "BKMGT";
	int u = 0;

	while (b >= 1024 && u < 4) {
		b /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%.0f", b);
	else
		snprintf(buf, len, "%.1f%c", b, units[u]);
}

/* An ISO 8601 UTC time ("2026-11-21T10:00:00.123Z") as seconds; -1. */
static double
parse_time(const char *s)
{
	struct tm tm;
	const char *p;
	double frac = 0;

	if (s == NULL || *s == '\0')
		return -1;
	memset(&tm, 0, sizeof tm);
	if ((p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) == NULL)
		return -1;
	if (*p == '.')
		frac = strtod(p, NULL);
	return (double)timegm(&tm) + frac;
}

static double
now_real(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "in 8.0s", "5.0s ago", "-" */
static void
fmt_relative(char *buf, size_t len, json_t *when)
{
	double t = parse_time(json_string_value(when)), d;
	char dur[32];

	if (t < 0) {
		snprintf(buf, len, "-");
		return;
	}
	d = t - now_real();
	fmt_duration(dur, sizeof dur, d < 0 ? -d : d);
	if (d >= 0)
		snprintf(buf, len, "in %s", dur);
	else
		snprintf(buf, len, "%s ago", dur);
}

/* S on one line, at most MAX characters. */
static char *
one_line(const char *s, size_t max)
{
	size_t n = strcspn(s, "\n\r");
	bool cut = n > max || s[n] != '\0';

	if (n > max)
		n = max;
	return xasprintf("%.*s%s", (int)n, s, cut ? "..." : "");
}

/* A table: rows of strings, printed with aligned columns. */
struct table {
	size_t ncols, nrows;
	char **cells;
};

static void
table_init(struct table *t, size_t ncols)
{
	memset(t, 0, sizeof *t);
	t->ncols = ncols;
}

/* Add a row of NCOLS strings (copied). */
static void
table_add(struct table *t, ...)
{
	va_list ap;

	t->cells = xrealloc(t->cells, (t->nrows + 1) * t->ncols * sizeof *t->cells);
	va_start(ap, t);
	for (size_t i = 0; i < t->ncols; i++) {
		const char *s = va_arg(ap, const char *);
		t->cells[t->nrows * t->ncols + i] = xstrdup(s ? s : "");
	}
	va_end(ap);
	t->nrows++;
}

static void
table_print(struct table *t, const char *indent)
{
	size_t *w = xcalloc(t->ncols, sizeof *w);

	for (size_t r = 0; r < t->nrows; r++)
		for (size_t i = 0; i < t->ncols; i++) {
			size_t n = strlen(t->cells[r * t->ncols + i]);
			if (n > w[i])
				w[i] = n;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		fputs(indent, stdout);
		for (size_t i = 0; i < t->ncols; i++) {
			const char *s = t->cells[r * t->ncols + i];
			if (i + 1 == t->ncols)
				printf("%s\n", s);
			else
				printf("%-*s  ", (int)w[i], s);
		}
	}
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	free(w);
}

static void
print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_FLAGS | JSON_ENCODE_ANY);

	if (s) {
		printf("%s\n", s);
		free(s);
	}
}

/* "#7 ok, 2 tasks, 4ms, 5.0s ago" */
static void
fmt_last_run(char *buf, size_t len, json_t *run)
{
	char wall[32], ago[48];

	if (!json_is_object(run)) {
		snprintf(buf, len, "-");
		return;
	}
	fmt_duration(wall, sizeof wall, jnum(run, "wall_s"));
	fmt_relative(ago, sizeof ago, json_object_get(run, "started"));
	if (jint(run, "failed"))
		snprintf(buf, len, "#%" JSON_INTEGER_FORMAT " failed (%" JSON_INTEGER_FORMAT
			 " of %" JSON_INTEGER_FORMAT "), %s, %s", jint(run, "run"),
			 jint(run, "failed"), jint(run, "tasks"), wall, ago);
	else
		snprintf(buf, len, "#%" JSON_INTEGER_FORMAT " ok, %" JSON_INTEGER_FORMAT
			 " task%s, %s, %s", jint(run, "run"), jint(run, "tasks"),
			 jint(run, "tasks") == 1 ? "" : "s", wall, ago);
}

/* --- printing each command's reply ------------------------------------- */

static void
print_status(json_t *data)
{
	json_t *dmn = json_object_get(data, "daemon"), *jobs = json_object_get(data, "jobs");
	struct table t;
	char up[32];
	size_t i;
	json_t *job;

	fmt_duration(up, sizeof up, jnum(dmn, "uptime_s"));
	printf("jobrund %s (pid %" JSON_INTEGER_FORMAT "), up %s, config %s\n",
	       jstr(dmn, "version"), jint(dmn, "pid"), up, jstr(dmn, "config"));
	if (json_array_size(jobs) == 0) {
		printf("no jobs\n");
		return;
	}
	table_init(&t, 7);
	table_add(&t, "JOB", "MODE", "WORKERS", "SCHEDULE", "STATE", "NEXT RUN", "LAST RUN");
	json_array_foreach(jobs, i, job) {
		char workers[16], next[48], last[160], state[64];
		size_t nrunning = json_array_size(json_object_get(job, "running"));

		snprintf(workers, sizeof workers, "%" JSON_INTEGER_FORMAT, jint(job, "workers"));
		fmt_relative(next, sizeof next, json_object_get(job, "next_run"));
		fmt_last_run(last, sizeof last, json_object_get(job, "last_run"));
		if (nrunning > 1)
			snprintf(state, sizeof state, "%s (%zu runs)", jstr(job, "state"), nrunning);
		else
			snprintf(state, sizeof state, "%s", jstr(job, "state"));
		table_add(&t, jstr(job, "name"), jstr(job, "mode"), workers,
			  jstr(job, "schedule"), state, next, last);
	}
	table_print(&t, "");
}

static void
print_results_table(json_t *results)
{
	struct table t;
	size_t i;
	json_t *r;

	table_init(&t, 6);
	table_add(&t, "TASK", "INPUT", "STATUS", "WALL", "PID", "OUTPUT / ERROR");
	json_array_foreach(results, i, r) {
		char idx[24], wall[32], pid[24];
		const char *err = json_string_value(json_object_get(r, "error"));
		char *in = one_line(json_is_string(json_object_get(r, "input")) ?
				    jstr(r, "input") : "-", 24);
		char *out = one_line(err && strcmp(jstr(r, "status"), "ok") != 0 ? err :
				     jstr(r, "output"), 60);

		snprintf(idx, sizeof idx, "%" JSON_INTEGER_FORMAT, jint(r, "index"));
		fmt_duration(wall, sizeof wall, jnum(r, "wall_s"));
		snprintf(pid, sizeof pid, "%" JSON_INTEGER_FORMAT, jint(r, "pid"));
		table_add(&t, idx, in, jstr(r, "status"), wall, pid, out);
		free(in);
		free(out);
	}
	table_print(&t, "  ");
}

static void
print_show(json_t *data)
{
	json_t *def = json_object_get(data, "definition"), *v, *last;
	struct table t;
	char buf[512], dur[32], rel[48];
	size_t i;

	printf("job %s (%s:%" JSON_INTEGER_FORMAT ")\n", jstr(data, "name"),
	       jstr(def, "file"), jint(def, "line"));
	table_init(&t, 2);
	table_add(&t, "plugin", jstr(data, "plugin"));
	snprintf(buf, sizeof buf, "%s, %" JSON_INTEGER_FORMAT " worker%s%s", jstr(data, "mode"),
		 jint(data, "workers"), jint(data, "workers") == 1 ? "" : "s",
		 json_is_true(json_object_get(def, "prestart")) ? ", prestarted" : "");
	table_add(&t, "mode", buf);
	fmt_relative(rel, sizeof rel, json_object_get(data, "next_run"));
	snprintf(buf, sizeof buf, "%s%s%s", jstr(data, "schedule"),
		 strcmp(rel, "-") ? ", next run " : "", strcmp(rel, "-") ? rel : "");
	table_add(&t, "schedule", buf);
	table_add(&t, "state", jstr(data, "state"));
	table_add(&t, "enabled", json_is_true(json_object_get(data, "enabled")) ? "yes" : "no");
	v = json_object_get(def, "inputs");
	if (json_is_array(v)) {
		json_t *in;
		size_t off = 0;
		buf[0] = '\0';
		json_array_foreach(v, i, in) {
			int n = snprintf(buf + off, sizeof buf - off, "%s%s", i ? ", " : "",
					 json_string_value(in) ? json_string_value(in) : "");
			if (n < 0 || (size_t)n >= sizeof buf - off) {
				snprintf(buf + sizeof buf - 5, 5, "...");
				break;
			}
			off += (size_t)n;
		}
		table_add(&t, "inputs", json_array_size(v) ? buf : "(none: runs have no task)");
	} else {
		table_add(&t, "inputs", "(one task without input)");
	}
	if (jnum(def, "timeout_s") > 0) {
		fmt_duration(dur, sizeof dur, jnum(def, "timeout_s"));
		table_add(&t, "timeout", dur);
	} else {
		table_add(&t, "timeout", "none");
	}
	if (strcmp(jstr(data, "mode"), "process") == 0) {
		fmt_duration(dur, sizeof dur, jnum(def, "kill_grace_s"));
		table_add(&t, "kill_grace", dur);
	}
	table_add(&t, "overlap", jstr(def, "overlap"));
	snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, jint(def, "retries"));
	table_add(&t, "retries", buf);
	if (json_is_string(json_object_get(def, "user")))
		table_add(&t, "user", jstr(def, "user"));
	if (json_is_string(json_object_get(def, "group")))
		table_add(&t, "group", jstr(def, "group"));
	if (json_is_string(json_object_get(def, "cwd")))
		table_add(&t, "cwd", jstr(def, "cwd"));
	json_array_foreach(json_object_get(data, "running"), i, v) {
		fmt_relative(rel, sizeof rel, json_object_get(v, "started"));
		snprintf(buf, sizeof buf, "run %" JSON_INTEGER_FORMAT ": %" JSON_INTEGER_FORMAT
			 " of %" JSON_INTEGER_FORMAT " tasks done, %" JSON_INTEGER_FORMAT
			 " not ok, started %s", jint(v, "run"), jint(v, "done"),
			 jint(v, "tasks"), jint(v, "failed"), rel);
		table_add(&t, "running", buf);
	}
	v = json_object_get(data, "last_control");
	if (json_is_object(v)) {
		fmt_relative(rel, sizeof rel, json_object_get(v, "time"));
		snprintf(buf, sizeof buf, "%s%s%s by uid %" JSON_INTEGER_FORMAT
			 " (pid %" JSON_INTEGER_FORMAT "), %s", jstr(v, "action"),
			 json_object_get(v, "signal") ? " " : "", jstr(v, "signal"),
			 jint(v, "uid"), jint(v, "pid"), rel);
		table_add(&t, "last control", buf);
	}
	table_print(&t, "  ");
	last = json_object_get(data, "last_run");
	if (!json_is_object(last)) {
		printf("no finished run yet\n");
		return;
	}
	fmt_last_run(buf, sizeof buf, last);
	printf("last run %s\n", buf);
	if (json_array_size(json_object_get(last, "results")))
		print_results_table(json_object_get(last, "results"));
}

static void
print_workers(json_t *data)
{
	json_t *rows = json_object_get(data, "workers"), *w;
	struct table t;
	size_t i;

	if (json_array_size(rows) == 0) {
		printf("no workers\n");
		return;
	}
	table_init(&t, 10);
	table_add(&t, "JOB", "MODE", "PID", "TID", "STATE", "RUN", "TASK", "DONE", "RSS", "CPU");
	json_array_foreach(rows, i, w) {
		char pid[24], tid[24] = "-", run[24] = "-", task[24] = "-", done[24];
		char rss[24] = "-", cpu[32] = "-";

		snprintf(pid, sizeof pid, "%" JSON_INTEGER_FORMAT, jint(w, "pid"));
		if (json_is_integer(json_object_get(w, "tid")))
			snprintf(tid, sizeof tid, "%" JSON_INTEGER_FORMAT, jint(w, "tid"));
		if (json_is_integer(json_object_get(w, "run")))
			snprintf(run, sizeof run, "%" JSON_INTEGER_FORMAT, jint(w, "run"));
		if (json_is_integer(json_object_get(w, "task")))
			snprintf(task, sizeof task, "%" JSON_INTEGER_FORMAT, jint(w, "task"));
		snprintf(done, sizeof done, "%" JSON_INTEGER_FORMAT, jint(w, "tasks_done"));
		if (json_is_integer(json_object_get(w, "rss_bytes")))
			fmt_bytes(rss, sizeof rss, (double)jint(w, "rss_bytes"));
		if (json_is_number(json_object_get(w, "cpu_s")))
			snprintf(cpu, sizeof cpu, "%.2fs", jnum(w, "cpu_s"));
		table_add(&t, jstr(w, "job"), jstr(w, "mode"), pid, tid, jstr(w, "state"),
			  run, task, done, rss, cpu);
	}
	table_print(&t, "");
}

static void
print_history(json_t *data)
{
	json_t *runs = json_object_get(data, "runs"), *r;
	struct table t;
	size_t i;

	if (json_array_size(runs) == 0) {
		printf("job %s: no runs recorded\n", jstr(data, "job"));
		return;
	}
	table_init(&t, 7);
	table_add(&t, "RUN", "STARTED", "TRIGGER", "STATUS", "TASKS", "FAILED", "WALL");
	json_array_foreach(runs, i, r) {
		char run[24], tasks[24], failed[24], wall[32] = "-", when[48];
		double t0 = parse_time(jstr(r, "started"));
		time_t sec = (time_t)t0;
		struct tm tm;

		snprintf(run, sizeof run, "%" JSON_INTEGER_FORMAT, jint(r, "run"));
		snprintf(tasks, sizeof tasks, "%" JSON_INTEGER_FORMAT, jint(r, "tasks"));
		snprintf(failed, sizeof failed, "%" JSON_INTEGER_FORMAT, jint(r, "failed"));
		if (json_is_number(json_object_get(r, "wall_s")))
			fmt_duration(wall, sizeof wall, jnum(r, "wall_s"));
		if (t0 >= 0 && localtime_r(&sec, &tm))
			strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
		else
			snprintf(when, sizeof when, "-");
		table_add(&t, run, when, jstr(r, "trigger"), jstr(r, "status"), tasks,
			  failed, wall);
	}
	table_print(&t, "");
}

static void
print_result_line(json_t *r)
{
	char wall[32];
	const char *err = json_string_value(json_object_get(r, "error"));
	char *out = one_line(err && strcmp(jstr(r, "status"), "ok") != 0 ? err :
			     jstr(r, "output"), 200);

	fmt_duration(wall, sizeof wall, jnum(r, "wall_s"));
	printf("%s run %" JSON_INTEGER_FORMAT " task %" JSON_INTEGER_FORMAT "%s%s%s: %s%s%s "
	       "(%s, pid %" JSON_INTEGER_FORMAT ")\n", jstr(r, "job"), jint(r, "run"),
	       jint(r, "index"), json_is_string(json_object_get(r, "input")) ? " [" : "",
	       jstr(r, "input"), json_is_string(json_object_get(r, "input")) ? "]" : "",
	       jstr(r, "status"), *out ? " " : "", out, wall, jint(r, "pid"));
	free(out);
}

static void
print_reply(const char *cmd, json_t *data)
{
	char wall[32];

	if (json_out) {
		print_json(data);
		return;
	}
	if (strcmp(cmd, "status") == 0) {
		print_status(data);
	} else if (strcmp(cmd, "show") == 0) {
		print_show(data);
	} else if (strcmp(cmd, "workers") == 0) {
		print_workers(data);
	} else if (strcmp(cmd, "history") == 0) {
		print_history(data);
	} else if (strcmp(cmd, "run") == 0) {
		if (json_object_get(data, "failed")) {
			fmt_duration(wall, sizeof wall, jnum(data, "wall_s"));
			printf("job %s run %" JSON_INTEGER_FORMAT ": %" JSON_INTEGER_FORMAT
			       " task%s, %" JSON_INTEGER_FORMAT " not ok, %s\n", jstr(data, "job"),
			       jint(data, "run"), jint(data, "tasks"),
			       jint(data, "tasks") == 1 ? "" : "s", jint(data, "failed"), wall);
		} else {
			printf("job %s: run %" JSON_INTEGER_FORMAT " started (%" JSON_INTEGER_FORMAT
			       " task%s)\n", jstr(data, "job"), jint(data, "run"),
			       jint(data, "tasks"), jint(data, "tasks") == 1 ? "" : "s");
		}
	} else if (strcmp(cmd, "cancel") == 0 ||
		   (strcmp(cmd, "kill") == 0 && strcmp(jstr(data, "mode"), "thread") == 0)) {
		if (strcmp(cmd, "kill") == 0)
			printf("job %s runs in thread mode: threads cannot be killed, so its "
			       "runs are cancelled\n", jstr(data, "job"));
		if (jint(data, "runs") == 0)
			printf("job %s: no active run: nothing to cancel\n", jstr(data, "job"));
		else
			printf("job %s: cancelling %" JSON_INTEGER_FORMAT " task%s in %"
			       JSON_INTEGER_FORMAT " run%s\n", jstr(data, "job"),
			       jint(data, "tasks"), jint(data, "tasks") == 1 ? "" : "s",
			       jint(data, "runs"), jint(data, "runs") == 1 ? "" : "s");
	} else if (strcmp(cmd, "kill") == 0) {
		json_t *pids = json_object_get(data, "pids"), *p;
		size_t i;

		if (json_array_size(pids) == 0) {
			printf("job %s: no worker process: nothing to kill\n", jstr(data, "job"));
			return;
		}
		printf("job %s: %s sent to %zu worker%s (pid", jstr(data, "job"),
		       jstr(data, "signal"), json_array_size(pids),
		       json_array_size(pids) == 1 ? "" : "s");
		json_array_foreach(pids, i, p)
			printf("%s%" JSON_INTEGER_FORMAT, i ? ", " : " ", json_integer_value(p));
		printf(")\n");
	} else if (strcmp(cmd, "reload") == 0) {
		printf("reloaded %s (%" JSON_INTEGER_FORMAT " job%s)\n", jstr(data, "config"),
		       jint(data, "jobs"), jint(data, "jobs") == 1 ? "" : "s");
	}
}

/* --- commands ---------------------------------------------------------- */

/* A signal given as "-9", "-KILL", "-SIGKILL" or "-kill"; -1 if none. */
static int
parse_signal(const char *arg)
{
	char *end;
	long n;

	if (*arg == '-')
		arg++;
	if (*arg >= '0' && *arg <= '9') {
		n = strtol(arg, &end, 10);
		return *end == '\0' && n >= 1 && n < NSIG ? (int)n : -1;
	}
	if (strncasecmp(arg, "SIG", 3) == 0)
		arg += 3;
	for (int i = 1; i < NSIG; i++) {
		const char *name = sigabbrev_np(i);
		if (name && strcasecmp(arg, name) == 0)
			return i;
	}
	return -1;
}

/* Send REQ and print what comes back; returns the exit status. */
static int
do_request(const char *cmd, json_t *req, bool wait)
{
	struct conn c;
	int status = EXIT_FAIL;
	size_t nfailed = 0;

	if (conn_open(&c) == -1)
		return EXIT_FAIL;
	if (conn_send(&c, req) == -1) {
		conn_close(&c);
		return EXIT_FAIL;
	}
	for (;;) {
		json_t *m = conn_recv(&c, wait ? -1 : REPLY_TIMEOUT);
		const char *type;

		if (m == NULL)
			break;
		type = jstr(m, "type");
		if (strcmp(type, "started") == 0) {
			if (!json_out)
				printf("job %s: run %" JSON_INTEGER_FORMAT " started (%"
				       JSON_INTEGER_FORMAT " task%s)\n", jstr(m, "job"),
				       jint(m, "run"), jint(m, "tasks"),
				       jint(m, "tasks") == 1 ? "" : "s");
		} else if (strcmp(type, "result") == 0) {
			json_t *r = json_object_get(m, "result");
			if (strcmp(jstr(r, "status"), "ok") != 0)
				nfailed++;
			if (json_out)
				print_json(r);
			else
				print_result_line(r);
		} else if (strcmp(type, "reply") == 0) {
			if (json_is_true(json_object_get(m, "ok"))) {
				json_t *data = json_object_get(m, "data");
				if (!(wait && json_out))
					print_reply(cmd, data);
				if (wait && (nfailed > 0 || jint(data, "failed") > 0))
					status = EXIT_TASK_FAILED;
				else
					status = EXIT_OK;
			} else {
				json_t *errs = json_object_get(m, "errors"), *e;
				size_t i;
				json_array_foreach(errs, i, e)
					fprintf(stderr, "%s\n", json_string_value(e) ?
						json_string_value(e) : "?");
				warnx_("%s", jstr(m, "error"));
				status = EXIT_FAIL;
			}
			json_decref(m);
			break;
		}
		/* Other message types are from a newer jobrund: skip them. */
		json_decref(m);
		fflush(stdout);
	}
	conn_close(&c);
	fflush(stdout);
	return status;
}

static int
cmd_version(json_t *req)
{
	struct conn c;
	json_t *m, *data, *out;
	int status = EXIT_FAIL;

	if (!json_out)
		printf("jobrunctl %s (control protocol %d)\n", PACKAGE_VERSION,
		       CTL_PROTO_VERSION);
	fflush(stdout);
	if (conn_open(&c) == -1)
		return EXIT_FAIL;
	if (conn_send(&c, req) == 0 && (m = conn_recv(&c, REPLY_TIMEOUT)) != NULL) {
		if (json_is_true(json_object_get(m, "ok"))) {
			data = json_object_get(m, "data");
			if (json_out) {
				out = json_object();
				json_object_set_new(out, "jobrunctl", json_pack("{s:s,s:i}",
					"version", PACKAGE_VERSION, "protocol", CTL_PROTO_VERSION));
				json_object_set(out, "jobrund", data);
				print_json(out);
				json_decref(out);
			} else {
				printf("jobrund %s (pid %" JSON_INTEGER_FORMAT ", control protocol %"
				       JSON_INTEGER_FORMAT ", worker protocol %" JSON_INTEGER_FORMAT
				       ", plugin ABI %s)\n", jstr(data, "version"), jint(data, "pid"),
				       jint(data, "protocol"), jint(data, "worker_protocol"),
				       jstr(data, "plugin_abi"));
			}
			status = EXIT_OK;
		} else {
			warnx_("%s", jstr(m, "error"));
		}
		json_decref(m);
	}
	conn_close(&c);
	return status;
}

int
main(int argc, char **argv)
{
	const char *cmd, *job = NULL;
	bool wait = false;
	long n = -1;
	int sig = -1, i, status;
	json_t *req;

	signal(SIGPIPE, SIG_IGN);
	/* Options before the command; --json is also taken after it. */
	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0) {
			if (++i >= argc)
				return usage_error("%s needs a socket path", a);
			socket_path = argv[i];
		} else if (strncmp(a, "--socket=", 9) == 0) {
			socket_path = a + 9;
		} else if (strcmp(a, "-j") == 0 || strcmp(a, "--json") == 0) {
			json_out = true;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			return EXIT_OK;
		} else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
			printf("jobrunctl %s (control protocol %d)\n", PACKAGE_VERSION,
			       CTL_PROTO_VERSION);
			return EXIT_OK;
		} else {
			return usage_error("unknown option '%s'", a);
		}
	}
	if (i >= argc)
		return usage_error("no command");
	if (*socket_path == '\0')
		return usage_error("the socket path is empty");
	cmd = argv[i++];

	/* The command's arguments. */
	for (; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--json") == 0 || strcmp(a, "-j") == 0) {
			json_out = true;
		} else if (strcmp(cmd, "run") == 0 && (strcmp(a, "--wait") == 0 ||
						     strcmp(a, "-w") == 0)) {
			wait = true;
		} else if (strcmp(cmd, "history") == 0 && (strcmp(a, "-n") == 0 ||
							 strncmp(a, "-n", 2) == 0)) {
			const char *v = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
			char *end;
			if (v == NULL)
				return usage_error("-n needs a number of runs");
			errno = 0;
			n = strtol(v, &end, 10);
			if (*v == '\0' || *end != '\0' || errno || n < 1 || n > 1000000)
				return usage_error("-n: '%s' is not a number of runs (1 to 1000000)", v);
		} else if (strcmp(cmd, "kill") == 0 && a[0] == '-' && a[1] != '\0' && job) {
			if ((sig = parse_signal(a)) == -1)
				return usage_error("kill: '%s' is not a signal (e.g. -TERM, -9)", a);
		} else if (a[0] == '-' && a[1] != '\0') {
			return usage_error("%s: unknown option '%s'", cmd, a);
		} else if (job == NULL) {
			job = a;
		} else {
			return usage_error("%s: unexpected argument '%s'", cmd, a);
		}
	}

	if (strcmp(cmd, "status") == 0 || strcmp(cmd, "reload") == 0 ||
	    strcmp(cmd, "version") == 0) {
		if (job)
			return usage_error("%s takes no argument", cmd);
	} else if (strcmp(cmd, "show") == 0 || strcmp(cmd, "run") == 0 ||
		   strcmp(cmd, "cancel") == 0 || strcmp(cmd, "kill") == 0 ||
		   strcmp(cmd, "history") == 0) {
		if (job == NULL)
			return usage_error("%s needs a job name", cmd);
	} else if (strcmp(cmd, "workers") != 0) {
		return usage_error("unknown command '%s'", cmd);
	}

	req = json_object();
	json_object_set_new(req, "v", json_integer(CTL_PROTO_VERSION));
	json_object_set_new(req, "cmd", json_string(cmd));
	if (job) {
		json_t *j = json_string(job);
		if (j == NULL) {
			json_decref(req);
			return usage_error("the job name is not valid UTF-8");
		}
		json_object_set_new(req, "job", j);
	}
	if (wait)
		json_object_set_new(req, "wait", json_true());
	if (sig > 0)
		json_object_set_new(req, "signal", json_integer(sig));
	if (n > 0)
		json_object_set_new(req, "n", json_integer(n));
	if (strcmp(cmd, "version") == 0)
		status = cmd_version(req);
	else
		status = do_request(cmd, req, wait);
	json_decref(req);
	return status;
}
