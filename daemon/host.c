/*
 * host.c - the services jobrund offers plugins (struct jr_host), and the
 * job and task handles behind them.
 *
 * The same table serves the daemon (thread mode, `-t` validation) and
 * jobrund-worker (process mode): what differs between the two is behind
 * the handles' hooks (how a task learns it is cancelled, where a log line
 * goes), set by whoever owns the handle.
 *
 * Settings are read from a libconfig group; problems are reported with
 * the setting's own file and line, so `jobrund -t` points at the mistake.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "jobrund.h"

/* Most output a plugin may produce for one task; the rest is dropped. */
#define HOST_OUTPUT_MAX (1024 * 1024)

/* Where task_log and job logs go: the daemon logs directly; the worker
 * installs a hook that forwards lines to the daemon. */
static void (*host_log_hook)(int priority, const char *job, const char *msg);

void
host_set_log_hook(void (*hook)(int priority, const char *job, const char *msg))
{
	host_log_hook = hook;
}

static char *
job_keep(struct jr_job *hj, char *s)
{
	hj->scratch = xrealloc(hj->scratch, (hj->nscratch + 1) * sizeof *hj->scratch);
	hj->scratch[hj->nscratch++] = s;
	return s;
}

void
host_job_init(struct jr_job *hj, const struct job_def *def,
	      const struct jr_config *cfg, struct errlist *errs)
{
	memset(hj, 0, sizeof *hj);
	hj->name = def->name;
	hj->file = def->file;
	hj->cfg = cfg;
	hj->line = def->line;
	hj->settings = def->settings;
	hj->errs = errs;
}

void
host_job_release(struct jr_job *hj)
{
	for (size_t i = 0; i < hj->nscratch; i++)
		free(hj->scratch[i]);
	free(hj->scratch);
	hj->scratch = NULL;
	hj->nscratch = 0;
}

static const char *
h_job_name(const jr_job *job)
{
	return job->name;
}

static config_setting_t *
setting_find(jr_job *job, const char *name)
{
	if (job->settings == NULL || name == NULL)
		return NULL;
	return config_setting_get_member(job->settings, name);
}

static void
report(jr_job *job, config_setting_t *s, const char *name, const char *msg)
{
	int line = s ? (int)config_setting_source_line(s) : job->line;
	const char *file = s ? cfg_setting_path(job->cfg, s) : NULL;

	/* Settings read from no file (a worker's, rebuilt from their text):
	 * the job's. */
	if (file == NULL)
		file = job->file;
	job->nerrors++;
	if (job->errs) {
		if (file && line > 0)
			errlist_add(job->errs, "%s:%d: job '%s': settings.%s: %s",
				    file, line, job->name, name ? name : "", msg);
		else
			errlist_add(job->errs, "job '%s': settings.%s: %s",
				    job->name, name ? name : "", msg);
	} else {
		log_msg(LOG_ERR, "job '%s': settings.%s: %s", job->name,
			name ? name : "", msg);
	}
}

static const char *
type_name(int type)
{
	switch (type) {
	case CONFIG_TYPE_GROUP: return "a group";
	case CONFIG_TYPE_INT: case CONFIG_TYPE_INT64: return "an integer";
	case CONFIG_TYPE_FLOAT: return "a number";
	case CONFIG_TYPE_STRING: return "a string";
	case CONFIG_TYPE_BOOL: return "a boolean";
	case CONFIG_TYPE_ARRAY: return "an array";
	case CONFIG_TYPE_LIST: return "a list";
	}
	return "something else";
}

static int
wrong_type(jr_job *job, config_setting_t *s, const char *name, const char *want)
{
	char msg[128];

	snprintf(msg, sizeof msg, "expected %s, got %s", want,
		 type_name(config_setting_type(s)));
	report(job, s, name, msg);
	return EINVAL;
}

static int
h_setting_string(jr_job *job, const char *name, const char **value)
{
	config_setting_t *s = setting_find(job, name);

	if (s == NULL)
		return ENOENT;
	if (config_setting_type(s) != CONFIG_TYPE_STRING)
		return wrong_type(job, s, name, "a string");
	*value = config_setting_get_string(s);
	return 0;
}

static int
h_setting_int(jr_job *job, const char *name, int64_t *value)
{
	config_setting_t *s = setting_find(job, name);

	if (s == NULL)
		return ENOENT;
	if (config_setting_type(s) == CONFIG_TYPE_INT)
		*value = config_setting_get_int(s);
	else if (config_setting_type(s) == CONFIG_TYPE_INT64)
		*value = config_setting_get_int64(s);
	else
		return wrong_type(job, s, name, "an integer");
	return 0;
}

static int
h_setting_float(jr_job *job, const char *name, double *value)
{
	config_setting_t *s = setting_find(job, name);

	if (s == NULL)
		return ENOENT;
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
		*value = config_setting_get_int(s);
		return 0;
	case CONFIG_TYPE_INT64:
		*value = (double)config_setting_get_int64(s);
		return 0;
	case CONFIG_TYPE_FLOAT:
		*value = config_setting_get_float(s);
		if (!isfinite(*value)) {
			report(job, s, name, "not a finite number");
			return EINVAL;
		}
		return 0;
	}
	return wrong_type(job, s, name, "a number");
}

static int
h_setting_bool(jr_job *job, const char *name, int *value)
{
	config_setting_t *s = setting_find(job, name);

	if (s == NULL)
		return ENOENT;
	if (config_setting_type(s) != CONFIG_TYPE_BOOL)
		return wrong_type(job, s, name, "a boolean (true or false)");
	*value = config_setting_get_bool(s);
	return 0;
}

static int
h_setting_strings(jr_job *job, const char *name, const char *const **values,
		  size_t *count)
{
	config_setting_t *s = setting_find(job, name);
	const char **v;
	int n;

	if (s == NULL)
		return ENOENT;
	if (config_setting_type(s) == CONFIG_TYPE_STRING) {
		/* A lone string is a list of one: command = "uptime". */
		v = xcalloc(2, sizeof *v);
		v[0] = config_setting_get_string(s);
		job_keep(job, (char *)v);
		*values = v;
		*count = 1;
		return 0;
	}
	if (config_setting_type(s) != CONFIG_TYPE_ARRAY &&
	    config_setting_type(s) != CONFIG_TYPE_LIST)
		return wrong_type(job, s, name, "a list of strings");
	n = config_setting_length(s);
	v = xcalloc((size_t)n + 1, sizeof *v);
	for (int i = 0; i < n; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		if (config_setting_type(e) != CONFIG_TYPE_STRING) {
			char msg[128];
			snprintf(msg, sizeof msg,
				 "element %d: expected a string, got %s", i,
				 type_name(config_setting_type(e)));
			report(job, e, name, msg);
			free(v);
			return EINVAL;
		}
		v[i] = config_setting_get_string(e);
	}
	job_keep(job, (char *)v);
	*values = v;
	*count = (size_t)n;
	return 0;
}

static void
h_setting_error(jr_job *job, const char *name, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	report(job, setting_find(job, name), name, msg);
}

static const char *const *
h_setting_keys(jr_job *job)
{
	int n = job->settings ? config_setting_length(job->settings) : 0;
	const char **keys = xcalloc((size_t)n + 1, sizeof *keys);

	for (int i = 0; i < n; i++)
		keys[i] = config_setting_name(
			config_setting_get_elem(job->settings, (unsigned)i));
	job_keep(job, (char *)keys);
	return keys;
}

void
host_task_init(struct jr_task *t, const char *job, const char *input,
	       double timeout_s)
{
	memset(t, 0, sizeof *t);
	t->job = job;
	t->input = input;
	t->out_limit = HOST_OUTPUT_MAX;
	t->deadline = timeout_s > 0 ? mono_now() + timeout_s : 0;
}

void
host_task_release(struct jr_task *t)
{
	if (t->out != t->out_small)
		free(t->out);
	free(t->error);
	t->out = t->error = NULL;
	t->out_len = t->out_cap = 0;
}

static const char *
h_task_input(const jr_task *task)
{
	return task->input;
}

static bool
task_past_deadline(const jr_task *task)
{
	return task->deadline > 0 && mono_now() >= task->deadline;
}

static int
h_task_cancelled(jr_task *task)
{
	if (task_past_deadline(task))
		return 1;
	return task->cancel_check ? task->cancel_check(task) : 0;
}

static double
h_task_remaining(jr_task *task)
{
	double left;

	if (task->deadline <= 0)
		return -1;
	left = task->deadline - mono_now();
	return left > 0 ? left : 0;
}

static int
h_task_output(jr_task *task, const void *data, size_t len)
{
	size_t room = task->out_limit - task->out_len;
	size_t take = len < room ? len : room;

	if (task->out == NULL) {
		/* Short output (the usual case) needs no allocation. */
		task->out = task->out_small;
		task->out_cap = sizeof task->out_small;
	}
	size_t need = task->out_len + take + 1;

	if (need > task->out_cap && task->out == task->out_small) {
		/* Most tasks write once: the first write past the small
		 * buffer gets what it needs and no more (the result keeps
		 * this buffer); later ones double it. */
		char *big = xmalloc(need);

		memcpy(big, task->out_small, task->out_len);
		task->out = big;
		task->out_cap = need;
	} else if (need > task->out_cap) {
		size_t cap = task->out_cap * 2;

		while (cap < need)
			cap *= 2;
		task->out = xrealloc(task->out, cap);
		task->out_cap = cap;
	}
	memcpy(task->out + task->out_len, data, take);
	task->out_len += take;
	task->out[task->out_len] = '\0';
	if (take < len) {
		task->out_dropped += len - take;
		return EFBIG;
	}
	return 0;
}

static int
h_task_printf(jr_task *task, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n, rc;

	char small[256];

	/* Short output (the usual case) is formatted on the stack. */
	va_start(ap, fmt);
	n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0)
		return ENOMEM;
	if ((size_t)n < sizeof small)
		return h_task_output(task, small, (size_t)n);
	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		return ENOMEM;
	rc = h_task_output(task, s, (size_t)n);
	free(s);
	return rc;
}

static void
h_task_error(jr_task *task, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	free(task->error);
	task->error = s;
}

static void
host_vlog(const char *job, int priority, const char *fmt, va_list ap)
{
	char msg[2048];

	if (priority < LOG_ERR)
		priority = LOG_ERR;
	if (priority > LOG_DEBUG)
		priority = LOG_DEBUG;
	if (!log_enabled(priority))
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (host_log_hook)
		host_log_hook(priority, job, msg);
	else if (job)
		log_msg(priority, "job %s: %s", job, msg);
	else
		log_msg(priority, "plugin: %s", msg);
}

static void
h_log(jr_job *job, int priority, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	host_vlog(job ? job->name : NULL, priority, fmt, ap);
	va_end(ap);
}

static void
h_task_log(jr_task *task, int priority, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	host_vlog(task ? task->job : NULL, priority, fmt, ap);
	va_end(ap);
}

const struct jr_host host_table = {
	.size = sizeof(struct jr_host),
	.abi_major = JR_ABI_MAJOR,
	.abi_minor = JR_ABI_MINOR,
	.job_name = h_job_name,
	.setting_string = h_setting_string,
	.setting_int = h_setting_int,
	.setting_float = h_setting_float,
	.setting_bool = h_setting_bool,
	.setting_strings = h_setting_strings,
	.setting_error = h_setting_error,
	.setting_keys = h_setting_keys,
	.task_input = h_task_input,
	.task_cancelled = h_task_cancelled,
	.task_remaining = h_task_remaining,
	.task_output = h_task_output,
	.task_printf = h_task_printf,
	.task_error = h_task_error,
	.log = h_log,
	.task_log = h_task_log,
};

int
host_plugin_init(const struct jr_plugin *pl, struct jr_job *hj, void **state)
{
	int rc;

	*state = NULL;
	if (pl->init == NULL) {
		/* A plugin without init takes no settings: say so rather than
		 * silently ignoring what the user wrote. */
		if (hj->settings && config_setting_length(hj->settings) > 0) {
			h_setting_error(hj, config_setting_name(
				config_setting_get_elem(hj->settings, 0)),
				"plugin '%s' takes no settings", pl->name);
			return EINVAL;
		}
		return 0;
	}
	rc = pl->init(&host_table, hj, state);
	if (rc < 0)             /* be forgiving of -errno conventions */
		rc = -rc;
	if (rc == 0 && hj->nerrors > 0)
		rc = EINVAL;
	return rc;
}

static double
thread_cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts_to_s(&ts);
}

/*
 * The thread's CPU clock is a system call (no vDSO), and two of them cost
 * more than a short task.  So each thread keeps an anchor: its CPU clock
 * and CLOCK_MONOTONIC read together.  A task that starts within
 * TIMING_ANCHOR_S of the anchor, on a thread that has not waited since,
 * dates its CPU start from it (the thread ran all along: it only ran our
 * code between tasks).  A task shorter than TIMING_READ_S is charged its
 * wall time: a thread's CPU time cannot exceed its wall time, and below
 * that the two differ only if the task was preempted.  Longer tasks read
 * the clock at their end, which also moves the anchor.  The worker uses
 * the same with its process's clock (host_run_task_clocked); a thread
 * keeps to one clock, since the anchor is the thread's.
 */
#define TIMING_ANCHOR_S 100e-6  /* bounds the error if preempted between
				   tasks; a read per 100 us costs < 1 % */
#define TIMING_READ_S 10e-6

static _Thread_local struct {
	double cpu, wall;
	bool valid;
	/* CLOCK_REALTIME - CLOCK_MONOTONIC in ns, read at real_at (mono) */
	int64_t real_minus_mono;
	double real_at;
} anchor;

/* A task's start on CLOCK_REALTIME, for its result.  The clock is read
 * at most every TIMING_ANCHOR_S; in between, the start is the monotonic
 * one plus the offset last read, so a step of the system clock shows in
 * tasks' start times at most that late. */
static void
task_started_at(double wall, struct timespec *ts)
{
	int64_t ns;

	if (!anchor.valid || wall - anchor.real_at > TIMING_ANCHOR_S) {
		clock_gettime(CLOCK_REALTIME, ts);
		anchor.real_minus_mono = (int64_t)ts->tv_sec * 1000000000 +
		    ts->tv_nsec - (int64_t)(wall * 1e9);
		anchor.real_at = wall;
		return;
	}
	ns = (int64_t)(wall * 1e9) + anchor.real_minus_mono;
	ts->tv_sec = (time_t)(ns / 1000000000);
	ts->tv_nsec = (long)(ns % 1000000000);
	if (ts->tv_nsec < 0) {          /* a clock set before 1970 */
		ts->tv_nsec += 1000000000;
		ts->tv_sec--;
	}
}

void
host_timing_idle(void)
{
	anchor.valid = false;
}

void
host_run_task(const struct jr_plugin *pl, void *state, struct jr_task *t,
	      struct task_result *r)
{
	host_run_task_clocked(pl, state, t, r, thread_cpu_now, mono_now());
}

void
host_run_task_clocked(const struct jr_plugin *pl, void *state, struct jr_task *t,
		      struct task_result *r, double (*cpu_now)(void), double wall0)
{
	double wall1, cpu0, cpu;
	bool fresh = false;
	int rc;

	task_started_at(wall0, &r->started);
	if (!anchor.valid || wall0 - anchor.wall > TIMING_ANCHOR_S) {
		cpu0 = cpu_now();
		fresh = true;
	} else {
		cpu0 = anchor.cpu + (wall0 - anchor.wall);
	}
	rc = pl->run(&host_table, state, t);
	wall1 = mono_now();
	r->wall_s = wall1 - wall0;
	if (r->wall_s >= TIMING_READ_S) {
		double now = cpu_now();
		cpu = now - cpu0;
		anchor.cpu = now;
		anchor.wall = wall1;
	} else {
		cpu = r->wall_s;
		if (fresh) {
			anchor.cpu = cpu0 + cpu;
			anchor.wall = wall1;
		}
	}
	anchor.valid = true;
	/* The estimate of the start may overshoot by the little the thread
	 * was not running.  One thread's CPU time fits in its wall time (a
	 * process's, its children's included, need not). */
	r->cpu_s = cpu < 0 ? 0 : cpu;
	if (cpu_now == thread_cpu_now && r->cpu_s > r->wall_s)
		r->cpu_s = r->wall_s;
	if (rc < 0)
		rc = -rc;

	if (t->out == NULL || t->out == t->out_small) {
		result_set_output(r, t->out ? t->out : "", t->out_len);
	} else {
		/* Results are kept until their run ends: do not keep the
		 * slack of the growing buffer with each of them. */
		if (t->out_cap > t->out_len + 1)
			t->out = xrealloc(t->out, t->out_len + 1);
		result_adopt_output(r, t->out, t->out_len);
	}
	t->out = NULL;
	t->out_len = t->out_cap = 0;
	free(r->error);
	r->error = NULL;

	if (rc == 0) {
		r->status = TASK_OK;
	} else if (task_past_deadline(t)) {
		r->status = TASK_TIMEOUT;
		r->error = t->error ? t->error :
			xstrdup("the task ran past its timeout");
		t->error = NULL;
	} else if (t->cancel_check && t->cancel_check(t)) {
		r->status = TASK_CANCELLED;
		r->error = t->error ? t->error : xstrdup("cancelled");
		t->error = NULL;
	} else {
		r->status = TASK_FAILED;
		r->error = t->error ? t->error : xstrdup(strerror(rc));
		t->error = NULL;
	}
	if (t->out_dropped > 0 && r->status == TASK_OK) {
		/* Say so: a silently truncated result is a lost result. */
		r->error = xasprintf("output truncated: %zu bytes over the %d byte limit dropped",
				     t->out_dropped, HOST_OUTPUT_MAX);
	}
}
