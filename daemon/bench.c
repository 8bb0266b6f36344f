/*
 * bench.c - `jobrund --bench JOB`: run one job's tasks three ways (five
 * with --warm), measure each, and say which mode suits the job.
 *
 * The three runs, one after the other:
 *   sequential  one task after another in this thread, calling the plugin
 *               directly: the baseline, with no executor at all;
 *   thread      the job in thread mode with N workers;
 *   process     the job in process mode with N workers.
 * The last two go through the daemon's own machinery (jobrt_new,
 * run_start, the event loop, tpool.c, sup.c), so the numbers are the ones
 * the daemon would show.  The job's configured mode is ignored; a plugin
 * that is not JR_PLUGIN_THREAD_SAFE gets one thread, and the table says so.
 * The sequential and thread runs call the plugin inside jobrund: a plugin
 * that crashes takes the bench down, as it would take the daemon.
 *
 * Those pools start cold, but the daemon keeps a job's pool between runs,
 * so with --warm two more runs follow, "thread, warm" and "process, warm":
 * each on a new runtime whose pool an untimed warm-up run of the same
 * tasks has started, then the timed run on that pool, as the daemon's
 * later runs of the job find it.
 *
 * What each run reports:
 *   wall          from creating the pool (plugin init included) to the
 *                 last result; warm: from starting the timed run;
 *   CPU           user+sys of jobrund and of its workers: getrusage SELF
 *                 and CHILDREN deltas, read once the workers are reaped.
 *                 A warm run's workers are reaped only after it, their
 *                 CPU then holding the warm-up's too: so it is jobrund's
 *                 getrusage SELF over the run plus each live worker's
 *                 process CPU clock, read at its start and at its last
 *                 result (a worker that dies meanwhile is left out, and
 *                 the run's note says so); the clocks do not split user
 *                 from sys.  Process mode: plus the worker factory's
 *                 CPU clock over the run (its forks);
 *   peak RSS      jobrund's VmHWM, reset through /proc/self/clear_refs
 *                 before the run, plus each worker's VmHWM, sampled while
 *                 it lives (a warm run's live workers reset too), and in
 *                 process mode the worker factory's: an upper bound on
 *                 the peak of the sum;
 *   start-up      creation of the pool (warm: of the run) to the first
 *                 task starting in a worker: what a cold pool costs;
 *   overhead      (wall x workers - sum of the tasks' own wall) / tasks,
 *                 with workers at most the number of tasks: worker time
 *                 per task not spent in the plugin (dispatch, results,
 *                 start-up, idling at the end).
 * From these, one recommendation: CPU-bound or waiting from the
 * sequential run's CPU/wall ratio, thread or process from the measured
 * speed-ups (of the cold runs: what every figure's first run costs) and
 * what process mode's isolation costs.
 *
 * The table goes to stdout (one JSON document with --json), a progress
 * line to stderr when it is a terminal.  Exit status: 0; 1 on a config
 * error; 2 on a usage error; 3 when a task failed or a signal cut the
 * bench short (the table still comes out, saying which).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>               /* isnan, NAN: macros, no libm */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "jobrund.h"

#define BENCH_FAILS_KEPT	10		/* failures described per run */
#define BENCH_SAMPLE_S		0.1		/* worker memory sampling */
#define BENCH_PROGRESS_S	0.1		/* progress line refresh */
#define BENCH_SETTLE_S		0.02		/* after a warm-up */
#define BENCH_WORKERS_MAX	1024		/* what config.c allows */
#define BENCH_TASKS_MAX		100000000UL	/* inputs x repeat */
#define BENCH_PIDS_MAX		4096
/* A run whose CPU-bound tasks took this much more or less CPU than the
 * sequential run's ran on CPUs of another speed (bench_speed_check) */
#define BENCH_SPEED_TOLERANCE	0.10
#define BENCH_SPEED_MIN_TASK_S	2e-3		/* ...tasks this long at least */
#define BENCH_SPEED_BUSY	0.6		/* ...thread runs keeping this share
						   of their threads busy */

enum bench_kind {
	BENCH_SEQ, BENCH_THREAD, BENCH_PROCESS,         /* always */
	BENCH_THREAD_WARM, BENCH_PROCESS_WARM,          /* --warm */
	BENCH_NKINDS
};
#define BENCH_COLD_RUNS		BENCH_THREAD_WARM

/* A process's memory in KiB; -1 where unknown. */
struct bench_mem {
	pid_t pid;
	long rss, hwm, uss;
};

struct bench_fail {
	size_t index;                   /* in the bench's task list */
	enum task_status status;
	char *error;                    /* owned; may be NULL */
};

/* A warm run's worker process, live when the run started. */
struct bench_clock {
	pid_t pid;
	clockid_t clock;                /* its process CPU clock */
	double cpu0;                    /* at the start */
};

/* One of the runs. */
struct bench_run {
	const char *name;               /* in the table */
	const char *mode;               /* in the JSON: "thread", ... */
	int workers;
	struct job_def def;             /* the job as this run runs it */
	bool ran, complete;
	bool warm;                      /* on a pool a warm-up run started */
	double t0, t_end;               /* mono_now() */
	double rt0, first_start;        /* CLOCK_REALTIME: t0, the first
					   task's start (0: none yet) */
	double user0, sys0;             /* rusage at t0 */
	double wall, user, sys;
	double measuring;               /* CPU the bench spent reading /proc */
	double rq_wait;                 /* sequential: waiting for a CPU;
					   -1 unknown */
	double task_wall;               /* sum of the tasks' own wall */
	double task_cpu;                /* ...and of their own CPU time */
	double task_wall_min;           /* the shortest task's wall; -1: none */
	size_t ndone, nfailed;
	struct bench_fail fails[BENCH_FAILS_KEPT];
	size_t nfails;
	struct bench_mem self;          /* jobrund at the last result */
	struct bench_mem *wk;           /* each worker seen: its peak */
	size_t nwk, wkcap;
	struct bench_clock *clk;        /* warm: the workers at the start */
	size_t nclk;
	double wk_cpu;                  /* warm: their CPU over the run */
	/* Process mode: the worker factory (factory.c), whose forks are
	 * the run's; its CPU clock at t0 (fac_cpu0 < 0: none). */
	pid_t fac_pid;
	clockid_t fac_clock;
	double fac_cpu0;
	struct bench_mem fac_mem;       /* at the last result */
	char note[512];
};

/* What a run's numbers give, for the table, the JSON and the advice. */
struct bench_derived {
	double cpu, cpu_wall, speedup, tasks_s, startup, overhead;
	long peak, workers_peak;        /* KiB; -1 unknown */
};

struct bench {
	struct jr_config *cfg;
	struct job_def *job;
	char **inputs;                  /* ntasks pointers into the config */
	size_t ntasks, ninputs;
	long repeat;
	int workers;
	bool thread_safe;
	bool hwm_reset;                 /* clear_refs works: peaks per run */
	bool json, progress;
	bool interrupted;
	long ncpus;
	long usable_cpus;               /* of them, ours (affinity) */
	double loadavg;                 /* 1-minute, at the start */
	/* The sequential run's tasks: CPU they used besides the calling
	 * thread's (helper threads, children), and the calling thread's. */
	double seq_elsewhere, seq_thread;
	struct bench_run runs[BENCH_NKINDS];
	int nruns;                      /* BENCH_COLD_RUNS, or all: --warm */
	struct bench_run *cur;
	bool warming;                   /* cur's warm-up is running */
	size_t warm_done, warm_failed;  /* its results */
	struct jobrt *rt;
	struct loop_timer *sampler, *drain, *settle;
	double last_progress;
};

/* --- measuring --------------------------------------------------------- */

/* The CPU time of jobrund's reaped children. */
static double
bench_children_cpu(void)
{
	struct rusage kids;

	getrusage(RUSAGE_CHILDREN, &kids);
	return (double)(kids.ru_utime.tv_sec + kids.ru_stime.tv_sec) +
	    (double)(kids.ru_utime.tv_usec + kids.ru_stime.tv_usec) / 1e6;
}

/* jobrund's CPU time, and its reaped children's when CHILDREN. */
static void
bench_rusage(bool children, double *user, double *sys)
{
	struct rusage self, kids = { 0 };

	getrusage(RUSAGE_SELF, &self);
	if (children)
		getrusage(RUSAGE_CHILDREN, &kids);
	*user = (double)(self.ru_utime.tv_sec + kids.ru_utime.tv_sec) +
	    (double)(self.ru_utime.tv_usec + kids.ru_utime.tv_usec) / 1e6;
	*sys = (double)(self.ru_stime.tv_sec + kids.ru_stime.tv_sec) +
	    (double)(self.ru_stime.tv_usec + kids.ru_stime.tv_usec) / 1e6;
}

/* Value of a "Key:   N kB" line, or -1 if LINE is not KEY's. */
static long
bench_kib(const char *line, const char *key)
{
	size_t len = strlen(key);

	if (strncmp(line, key, len) != 0 || line[len] != ':')
		return -1;
	return strtol(line + len + 1, NULL, 10);
}

/* PID's memory from /proc: VmRSS and VmHWM from status, USS (private
 * pages: Private_Clean + Private_Dirty) from smaps_rollup. */
static void
bench_read_mem(pid_t pid, struct bench_mem *m)
{
	char path[64], line[256];
	long clean = -1, dirty = -1, v;
	FILE *fp;

	m->pid = pid;
	m->rss = m->hwm = m->uss = -1;
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	if ((fp = fopen(path, "re")) != NULL) {
		while (fgets(line, sizeof line, fp) != NULL) {
			if ((v = bench_kib(line, "VmRSS")) >= 0)
				m->rss = v;
			else if ((v = bench_kib(line, "VmHWM")) >= 0)
				m->hwm = v;
		}
		fclose(fp);
	}
	snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
	if ((fp = fopen(path, "re")) != NULL) {
		while (fgets(line, sizeof line, fp) != NULL) {
			if ((v = bench_kib(line, "Private_Clean")) >= 0)
				clean = v;
			else if ((v = bench_kib(line, "Private_Dirty")) >= 0)
				dirty = v;
		}
		fclose(fp);
	}
	if (clean >= 0 && dirty >= 0)
		m->uss = clean + dirty;
}

/* Reset the VmHWM of PID (0: jobrund) to its current RSS (Linux 4.0 and
 * later). */
static bool
bench_reset_hwm(pid_t pid)
{
	char path[64];
	FILE *fp;
	bool ok;

#ifdef __GLIBC__
	/* Give back what earlier runs freed, so it does not count here. */
	if (pid == 0)
		malloc_trim(0);
#endif
	if (pid == 0)
		snprintf(path, sizeof path, "/proc/self/clear_refs");
	else
		snprintf(path, sizeof path, "/proc/%d/clear_refs", (int)pid);
	if ((fp = fopen(path, "we")) == NULL)
		return false;
	ok = fputs("5", fp) >= 0;
	if (fclose(fp) != 0)
		ok = false;
	return ok;
}

/* The parent pid in /proc/PID/stat, or -1. */
static pid_t
bench_ppid(const char *pid)
{
	char path[300], buf[512], *p;
	int ppid = -1;
	FILE *fp;

	snprintf(path, sizeof path, "/proc/%s/stat", pid);
	if ((fp = fopen(path, "re")) == NULL)
		return -1;
	/* "pid (comm) state ppid ...": comm may hold anything but ends at
	 * the last ')'. */
	if (fgets(buf, sizeof buf, fp) != NULL && (p = strrchr(buf, ')')) != NULL)
		sscanf(p + 1, " %*c %d", &ppid);
	fclose(fp);
	return (pid_t)ppid;
}

/* jobrund's children (its workers; not the worker factory) into PIDS;
 * returns how many.  From
 * /proc/self/task/TID/children, or a scan of /proc on kernels without
 * CONFIG_PROC_CHILDREN. */
static size_t
bench_children(pid_t *pids, size_t max)
{
	char path[300];
	struct dirent *de;
	bool have_lists = false;
	size_t n = 0;
	pid_t me = getpid(), factory = factory_pid();
	long v;
	FILE *fp;
	DIR *d;

	if ((d = opendir("/proc/self/task")) != NULL) {
		while ((de = readdir(d)) != NULL && n < max) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof path, "/proc/self/task/%s/children",
			    de->d_name);
			if ((fp = fopen(path, "re")) == NULL)
				continue;
			have_lists = true;
			while (n < max && fscanf(fp, "%ld", &v) == 1)
				if ((pid_t)v != factory)
					pids[n++] = (pid_t)v;
			fclose(fp);
		}
		closedir(d);
	}
	if (have_lists || (d = opendir("/proc")) == NULL)
		return n;
	while ((de = readdir(d)) != NULL && n < max) {
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		pid_t pid = (pid_t)strtol(de->d_name, NULL, 10);

		if (bench_ppid(de->d_name) == me && pid != factory)
			pids[n++] = pid;
	}
	closedir(d);
	return n;
}

/* How long this thread has waited on a run queue (for a CPU, not for
 * I/O), from /proc/thread-self/schedstat; -1 if unknown. */
static double
bench_rq_wait(void)
{
	unsigned long long run, wait;
	FILE *fp;
	int n;

	if ((fp = fopen("/proc/thread-self/schedstat", "re")) == NULL)
		return -1;
	n = fscanf(fp, "%llu %llu", &run, &wait);
	fclose(fp);
	return n == 2 ? (double)wait / 1e9 : -1;
}

/* Add to R's note, after what it says already. */
static void JR_PRINTFLIKE(2, 3)
bench_note(struct bench_run *r, const char *fmt, ...)
{
	size_t len = strlen(r->note);
	va_list ap;

	if (len > 0 && len + 2 < sizeof r->note) {
		memcpy(r->note + len, "; ", 3);
		len += 2;
	}
	va_start(ap, fmt);
	vsnprintf(r->note + len, sizeof r->note - len, fmt, ap);
	va_end(ap);
}

/* A process CPU clock's reading, in seconds, or -1 (the process is gone:
 * reaped, since a zombie's clock still reads). */
static double
bench_clock_read(clockid_t clock)
{
	struct timespec ts;

	if (clock_gettime(clock, &ts) == -1)
		return -1;
	return ts_to_s(&ts);
}

/* A warm run starts on live workers, whose CPU RUSAGE_CHILDREN shows only
 * once they are reaped (warm-up included): read each one's process CPU
 * clock now and at the last result instead.  Their peaks are reset as
 * jobrund's is, so that the warm-up's do not count. */
static void
bench_workers_begin(struct bench_run *r)
{
	static pid_t pids[BENCH_PIDS_MAX];
	size_t n = bench_children(pids, BENCH_PIDS_MAX);
	bool reset = true;

	r->clk = xcalloc(n > 0 ? n : 1, sizeof *r->clk);
	for (size_t i = 0; i < n; i++) {
		struct bench_clock *c = &r->clk[r->nclk];

		if (clock_getcpuclockid(pids[i], &c->clock) != 0 ||
		    (c->cpu0 = bench_clock_read(c->clock)) < 0)
			continue;       /* gone meanwhile */
		c->pid = pids[i];
		r->nclk++;
		if (!bench_reset_hwm(pids[i]))
			reset = false;
	}
	if (!reset)
		bench_note(r, "%s: a worker's peak RSS could not be reset: it "
		    "includes the warm-up", r->name);
}

/* Was PID one of R's workers when R started? */
static bool
bench_was_live(const struct bench_run *r, pid_t pid)
{
	for (size_t i = 0; i < r->nclk; i++)
		if (r->clk[i].pid == pid)
			return true;
	return false;
}

/* At a warm run's last result: its workers' CPU since the start.  One
 * that has died and been reaped cannot be read: its share is left out,
 * and the note says so.  One started during the run counts whole. */
static void
bench_workers_end(struct bench_run *r)
{
	static pid_t pids[BENCH_PIDS_MAX];
	size_t n = bench_children(pids, BENCH_PIDS_MAX), lost = 0;
	clockid_t clock;
	double cpu;

	for (size_t i = 0; i < r->nclk; i++) {
		cpu = bench_clock_read(r->clk[i].clock);
		/* Less than at the start: the pid is another process now. */
		if (cpu < r->clk[i].cpu0)
			lost++;
		else
			r->wk_cpu += cpu - r->clk[i].cpu0;
	}
	for (size_t i = 0; i < n; i++)
		if (!bench_was_live(r, pids[i]) &&
		    clock_getcpuclockid(pids[i], &clock) == 0 &&
		    (cpu = bench_clock_read(clock)) >= 0)
			r->wk_cpu += cpu;
	if (lost > 0)
		bench_note(r, "%s: %zu worker%s ended during the run: %s CPU "
		    "is left out of it", r->name, lost, lost == 1 ? "" : "s",
		    lost == 1 ? "its" : "their");
}

static double
bench_thread_cpu(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts_to_s(&ts);
}

/* Record every live worker's memory in the current run: its peak, and
 * its RSS and USS as last seen.  The time this takes is not the job's:
 * it is kept apart and left out of the run's CPU. */
static void
bench_sample(struct bench *b)
{
	static pid_t pids[BENCH_PIDS_MAX];
	struct bench_run *r = b->cur;
	double cpu0 = bench_thread_cpu();
	size_t n = bench_children(pids, BENCH_PIDS_MAX);

	for (size_t i = 0; i < n; i++) {
		struct bench_mem m, *w = NULL;

		bench_read_mem(pids[i], &m);
		if (m.hwm < 0)
			continue;       /* gone meanwhile */
		for (size_t j = 0; j < r->nwk; j++)
			if (r->wk[j].pid == m.pid)
				w = &r->wk[j];
		if (w == NULL) {
			if (r->nwk == r->wkcap) {
				r->wkcap = r->wkcap ? r->wkcap * 2 : 8;
				r->wk = xrealloc(r->wk, r->wkcap * sizeof *r->wk);
			}
			w = &r->wk[r->nwk++];
			*w = m;
			continue;
		}
		if (m.hwm > w->hwm)
			w->hwm = m.hwm;
		w->rss = m.rss;
		w->uss = m.uss;
	}
	r->measuring += bench_thread_cpu() - cpu0;
}

static void
bench_sample_fired(void *arg)
{
	bench_sample(arg);
}

static void
bench_progress(struct bench *b, bool force)
{
	double now;

	if (!b->progress || b->cur == NULL)
		return;
	now = mono_now();
	if (!force && now - b->last_progress < BENCH_PROGRESS_S)
		return;
	b->last_progress = now;
	fprintf(stderr, "\r\033[Kjobrund --bench %s: %s%s, %d worker%s: %zu/%zu tasks",
	    b->job->name, b->cur->name, b->warming ? " (warm-up)" : "",
	    b->cur->workers, b->cur->workers == 1 ? "" : "s",
	    b->warming ? b->warm_done : b->cur->ndone, b->ntasks);
	fflush(stderr);
}

static void
bench_begin(struct bench *b, struct bench_run *r)
{
	struct timespec ts;

	b->cur = r;
	r->ran = true;
	b->hwm_reset = bench_reset_hwm(0);
	if (r->warm)
		bench_workers_begin(r);
	r->fac_cpu0 = -1;
	r->fac_pid = r->def.mode == MODE_PROCESS ? factory_pid() : 0;
	if (r->fac_pid > 0 && clock_getcpuclockid(r->fac_pid, &r->fac_clock) == 0)
		r->fac_cpu0 = bench_clock_read(r->fac_clock);
	bench_rusage(!r->warm, &r->user0, &r->sys0);
	bench_progress(b, true);
	clock_gettime(CLOCK_REALTIME, &ts);
	r->rt0 = ts_to_s(&ts);
	r->t0 = mono_now();
}

/* The run's last result is in (workers may still live). */
static void
bench_last_result(struct bench *b, struct bench_run *r)
{
	double cpu0;

	r->t_end = mono_now();
	r->wall = r->t_end - r->t0;
	cpu0 = bench_thread_cpu();
	bench_read_mem(getpid(), &r->self);
	r->measuring += bench_thread_cpu() - cpu0;
	bench_sample(b);
	r->fac_mem.hwm = -1;
	if (r->fac_pid > 0)
		bench_read_mem(r->fac_pid, &r->fac_mem);
	if (r->fac_cpu0 >= 0) {
		double cpu = bench_clock_read(r->fac_clock);

		if (cpu >= r->fac_cpu0)
			r->wk_cpu += cpu - r->fac_cpu0;
	}
	if (r->warm) {
		/* After the sampling, whose CPU is in SELF and in measuring. */
		double user, sys;

		bench_rusage(false, &user, &sys);
		r->user = user - r->user0;
		r->sys = sys - r->sys0;
		bench_workers_end(r);
	}
}

/* Everything is reaped: the CPU figures are complete (a warm run's were
 * at its last result). */
static void
bench_end(struct bench *b, struct bench_run *r)
{
	double user, sys;

	if (!r->warm) {
		bench_rusage(true, &user, &sys);
		r->user = user - r->user0;
		r->sys = sys - r->sys0;
	}
	r->complete = r->ndone == b->ntasks;
	bench_progress(b, true);
	b->cur = NULL;
}

/* Count one task's result. */
static void
bench_record(struct bench_run *r, size_t index, const struct task_result *tr)
{
	double started = ts_to_s(&tr->started);

	r->ndone++;
	if (tr->started.tv_sec != 0 &&
	    (r->first_start == 0 || started < r->first_start))
		r->first_start = started;
	r->task_wall += tr->wall_s;
	r->task_cpu += tr->cpu_s;
	if (r->task_wall_min < 0 || tr->wall_s < r->task_wall_min)
		r->task_wall_min = tr->wall_s;
	if (tr->status == TASK_OK)
		return;
	r->nfailed++;
	if (r->nfails < BENCH_FAILS_KEPT) {
		struct bench_fail *f = &r->fails[r->nfails++];
		f->index = index;
		f->status = tr->status;
		f->error = tr->error ? xstrdup(tr->error) : NULL;
	}
}

/* --- the sequential run ------------------------------------------------ */

/* SIGINT and SIGTERM are blocked (the loop reads them from a signalfd),
 * so between and inside sequential tasks they show as pending. */
static bool
bench_signal_pending(void)
{
	sigset_t set;

	if (sigpending(&set) == -1)
		return false;
	return sigismember(&set, SIGINT) == 1 || sigismember(&set, SIGTERM) == 1;
}

static int
bench_seq_cancel_check(struct jr_task *t)
{
	(void)t;
	return bench_signal_pending();
}

static void
bench_sequential(struct bench *b)
{
	struct bench_run *r = &b->runs[BENCH_SEQ];
	const struct jr_plugin *pl = loader_descriptor(b->job->plugin);
	struct errlist errs = { 0 };
	struct jr_job hj;
	void *state = NULL;
	double rq0, rq1;
	int rc;

	bench_begin(b, r);
	rq0 = bench_rq_wait();
	host_job_init(&hj, &r->def, b->cfg, &errs);
	rc = host_plugin_init(pl, &hj, &state);
	host_job_release(&hj);
	double since_check = 0;
	double thread0 = bench_clock_read(CLOCK_THREAD_CPUTIME_ID);
	double process0 = bench_clock_read(CLOCK_PROCESS_CPUTIME_ID);
	double children0 = bench_children_cpu();

	for (size_t i = 0; i < b->ntasks; i++) {
		struct task_result tr = { 0 };
		struct jr_task jt;

		/* A system call: not for every one of a million short tasks,
		 * but often enough that ^C is heard within a tenth of a
		 * second of task time. */
		if (i % 256 == 0 || since_check >= 0.1) {
			since_check = 0;
			if (bench_signal_pending()) {
				b->interrupted = true;
				break;
			}
		}
		if (rc != 0) {
			tr.status = TASK_FAILED;
			tr.error = xasprintf("plugin %s: init failed: %s",
			    b->job->plugin_name, errs.n ? errs.msgs[0] : strerror(rc));
		} else {
			host_task_init(&jt, r->def.name, b->inputs[i], r->def.timeout_s);
			jt.cancel_check = bench_seq_cancel_check;
			host_run_task(pl, state, &jt, &tr);
			host_task_release(&jt);
		}
		since_check += tr.wall_s;
		bench_record(r, i, &tr);
		result_clear(&tr);
		bench_progress(b, false);
	}
	/* The task loop only: init and fini are not the tasks' work. */
	b->seq_thread = bench_clock_read(CLOCK_THREAD_CPUTIME_ID) - thread0;
	b->seq_elsewhere = bench_clock_read(CLOCK_PROCESS_CPUTIME_ID) - process0 -
	    b->seq_thread + bench_children_cpu() - children0;
	if (rc == 0 && pl->fini != NULL)
		pl->fini(&host_table, state);
	errlist_free(&errs);
	bench_last_result(b, r);
	rq1 = bench_rq_wait();
	r->rq_wait = rq0 >= 0 && rq1 >= rq0 ? rq1 - rq0 : -1;
	bench_end(b, r);
}

/* --- the thread and process runs --------------------------------------- */

static void
bench_task_done(const struct task_result *tr, void *arg)
{
	struct bench *b = arg;

	if (b->warming) {
		b->warm_done++;
		b->warm_failed += tr->status != TASK_OK;
	} else {
		bench_record(b->cur, tr->index, tr);
	}
	bench_progress(b, false);
}

static void
bench_drain_check(void *arg)
{
	struct bench *b = arg;

	if (jobrt_count() > 0 || sup_live_workers() > 0 ||
	    sup_pools_stopping() > 0 || tpool_threads_alive() > 0)
		return;
	loop_timer_remove(b->drain);
	b->drain = NULL;
	loop_break();
}

/* Stop RT's pool and wait until every worker is reaped: only then does
 * RUSAGE_CHILDREN hold their CPU time, and the next run start clean. */
static void
bench_retire(struct bench *b, struct jobrt *rt)
{
	jobrt_retire(rt, false);
	b->rt = NULL;
	b->drain = loop_timer_add(0, 0.01, bench_drain_check, b);
}

static void
bench_settled(void *arg)
{
	struct bench *b = arg;

	loop_timer_remove(b->settle);
	b->settle = NULL;
	loop_break();
}

static void
bench_run_done(struct jobrt *rt, uint64_t id, size_t ntasks, size_t nfailed,
    double wall, void *arg)
{
	struct bench *b = arg;

	(void)id; (void)ntasks; (void)nfailed; (void)wall;
	if (b->warming) {
		/* The pool is started: bench_pool times the next run on it,
		 * unless a signal came.  First the workers finish with the
		 * warm-up (last results, acknowledgements), as they have
		 * when the daemon's next run of the job comes: otherwise
		 * that would count in the timed run. */
		b->warming = false;
		if (!b->interrupted) {
			b->settle = loop_timer_add(BENCH_SETTLE_S, 0,
			    bench_settled, b);
			return;
		}
	} else {
		bench_last_result(b, b->cur);
		loop_timer_remove(b->sampler);
		b->sampler = NULL;
	}
	bench_retire(b, rt);
}

static void
bench_on_signal(int signo, void *arg)
{
	struct bench *b = arg;

	if (signo == SIGHUP)
		return;
	if (b->interrupted) {
		log_msg(LOG_WARNING, "second SIG%s: exiting now", sigabbrev_np(signo));
		exit(3);
	}
	b->interrupted = true;
	if (b->rt != NULL)
		jobrt_cancel(b->rt, true);
}

/* An untimed run of the job's tasks on a new runtime, which starts its
 * pool's threads or workers, and leaves them for R's timed run in b->rt.
 * Returns 0; 1 when a signal cut it short (then the pool is gone); -1 on
 * a failure of the loop. */
static int
bench_warm_up(struct bench *b, struct bench_run *r)
{
	b->cur = r;
	b->warming = true;
	b->warm_done = b->warm_failed = 0;
	bench_progress(b, true);
	b->rt = jobrt_new(&r->def, b->cfg);
	run_start(b->rt);
	if (loop_run() == -1)
		return -1;
	if (!b->interrupted) {
		if (b->warm_failed > 0)
			bench_note(r, "%s: %zu of %zu tasks did not succeed in the "
			    "warm-up", r->name, b->warm_failed, b->warm_done);
		return 0;
	}
	/* A signal: it ended the warm-up, and bench_run_done retired the
	 * runtime and waited for its pool; or it came after the end. */
	if (b->rt != NULL) {
		bench_retire(b, b->rt);
		if (loop_run() == -1)
			return -1;
	}
	b->cur = NULL;
	return 1;
}

static int
bench_pool(struct bench *b, struct bench_run *r)
{
	int rc;

	if (r->warm && (rc = bench_warm_up(b, r)) != 0)
		return rc;
	bench_begin(b, r);
	b->sampler = loop_timer_add(BENCH_SAMPLE_S, BENCH_SAMPLE_S,
	    bench_sample_fired, b);
	if (!r->warm)
		b->rt = jobrt_new(&r->def, b->cfg);
	/* The run may end inside run_start (no tasks, a failed init), and
	 * then retire the runtime: do not touch it after. */
	run_start(b->rt);
	if (loop_run() == -1)
		return -1;
	bench_end(b, r);
	return 0;
}

/* --- the results --------------------------------------------------------- */

static void
bench_derive(const struct bench *b, const struct bench_run *r,
    struct bench_derived *d)
{
	const struct bench_run *seq = &b->runs[BENCH_SEQ];
	size_t used = (size_t)r->workers < r->ndone ? (size_t)r->workers : r->ndone;

	d->cpu = r->user + r->sys + r->wk_cpu - r->measuring;
	if (d->cpu < 0)
		d->cpu = 0;
	d->cpu_wall = r->wall > 0 ? d->cpu / r->wall : NAN;
	d->speedup = b->ntasks > 0 && seq->complete && r->complete &&
	    r->wall > 0 ? seq->wall / r->wall : NAN;
	d->tasks_s = r->ndone > 0 && r->wall > 0 ?
	    (double)r->ndone / r->wall : NAN;
	d->startup = r->first_start > 0 ? r->first_start - r->rt0 : NAN;
	d->overhead = r->ndone > 0 ?
	    (r->wall * (double)used - r->task_wall) / (double)r->ndone : NAN;
	d->workers_peak = 0;
	for (size_t i = 0; i < r->nwk; i++)
		d->workers_peak += r->wk[i].hwm;
	d->peak = r->self.hwm >= 0 ? r->self.hwm + d->workers_peak : -1;
	if (d->peak >= 0 && r->fac_mem.hwm > 0)
		d->peak += r->fac_mem.hwm;
}

static const char *
bench_fmt_time(double s, char *buf, size_t len)
{
	double mag = s < 0 ? -s : s;

	if (isnan(s))
		snprintf(buf, len, "-");
	else if (mag >= 1)
		snprintf(buf, len, "%.3f s", s);
	else if (mag >= 1e-3)
		snprintf(buf, len, "%.2f ms", s * 1e3);
	else if (mag >= 1e-6)
		snprintf(buf, len, "%.2f us", s * 1e6);
	else
		snprintf(buf, len, "%.0f ns", s * 1e9);
	return buf;
}

static const char *
bench_fmt_kib(long kib, char *buf, size_t len)
{
	if (kib < 0)
		snprintf(buf, len, "?");
	else if (kib >= 1024)
		snprintf(buf, len, "%.1f MiB", (double)kib / 1024);
	else
		snprintf(buf, len, "%ld KiB", kib);
	return buf;
}

/* The thread and process runs the recommendation compares: the warm
 * ones for a prestarted job (every run of it finds its pool), else the
 * cold ones. */
static void
bench_advice_runs(const struct bench *b, const struct bench_run **th,
    const struct bench_run **pr)
{
	const struct bench_run *tw = &b->runs[BENCH_THREAD_WARM];
	const struct bench_run *pw = &b->runs[BENCH_PROCESS_WARM];

	if (b->nruns > BENCH_COLD_RUNS && tw->complete && pw->complete &&
	    b->job->prestart) {
		*th = tw;
		*pr = pw;
	} else {
		*th = &b->runs[BENCH_THREAD];
		*pr = &b->runs[BENCH_PROCESS];
	}
}

/* Workers R could keep busy at once: its own, at most one per task and
 * per CPU. */
static size_t
bench_parallel(const struct bench *b, const struct bench_run *r)
{
	size_t n = (size_t)r->workers;

	if (r->ndone < n)
		n = r->ndone;
	if (b->usable_cpus > 0 && (size_t)b->usable_cpus < n)
		n = (size_t)b->usable_cpus;
	return n;
}

/* Did the sequential run's tasks do all their work on the calling thread
 * (no helper threads, no children)?  Then a process worker's CPU time,
 * its whole process's, is the task's as a thread's is. */
static bool
bench_on_calling_thread(const struct bench *b)
{
	return b->seq_elsewhere <= b->seq_thread * BENCH_SPEED_TOLERANCE / 2 + 1e-3;
}

/* Does R's tasks' CPU time measure their work, to set against the
 * sequential run's?  Not if tasks failed or are missing; not in process
 * mode for a plugin with helper threads or children (see above); not for
 * threads that took turns on a lock or an interpreter's GIL
 * (BENCH_SPEED_BUSY): handing over costs CPU of its own.  (Processes have
 * no GIL to share: one that kept few CPUs busy waited for a CPU.) */
static bool
bench_speed_measurable(const struct bench *b, const struct bench_run *r)
{
	const struct bench_run *seq = &b->runs[BENCH_SEQ];
	struct bench_derived d;
	size_t n = bench_parallel(b, r);

	if (!r->complete || r->ndone != seq->ndone || r->nfailed > 0)
		return false;
	if (r->def.mode == MODE_PROCESS)
		return bench_on_calling_thread(b);
	bench_derive(b, r, &d);
	return n <= 1 || d.cpu_wall >= BENCH_SPEED_BUSY * (double)n;
}

/* Did the CPUs run the runs at one speed?  The CPU time CPU-bound tasks
 * take is their work's, whatever the mode, where bench_speed_measurable
 * says so.  Where a run's tasks took more than BENCH_SPEED_TOLERANCE more
 * or less of it than the sequential run's:
 *   SPEED_PARALLEL  runs of several workers, alike: the cores slow each
 *                   other down when all work (a turbo budget they share,
 *                   hyperthreads, memory bandwidth), a real cost the
 *                   speed-ups rightly show; or the machine's speed
 *                   changed between the sequential run and the others;
 *                   either way the modes compare fairly;
 *   SPEED_VARIED    those runs differ from each other too, or are
 *                   faster while a run of one worker is not, or a run
 *                   of one worker (nothing in parallel) is off: the
 *                   machine's speed changed from run to run (other
 *                   guests of a virtual machine's host, frequency
 *                   scaling), invisible in the load average, and the
 *                   modes do not compare.
 * SPEED_UNKNOWN unless the tasks are CPU-bound, each lasts
 * BENCH_SPEED_MIN_TASK_S (a task's CPU clock may be read up to 100 µs
 * early, host.c), and both runs the recommendation compares are
 * measurable.  BUF says what each run took, and what that means. */
enum bench_speed { SPEED_UNKNOWN = -1, SPEED_STEADY, SPEED_PARALLEL, SPEED_VARIED };

static enum bench_speed
bench_speed_check(const struct bench *b, char *buf, size_t len)
{
	const struct bench_run *seq = &b->runs[BENCH_SEQ], *th, *pr;
	double per_task, lo = 0, hi = 0, busy;
	bool off_alone = false, steady_alone = false;
	bool slower = false, faster = false;
	int nparallel = 0;
	size_t used;
	char t[32];

	buf[0] = '\0';
	busy = seq->task_wall - (seq->rq_wait > 0 ? seq->rq_wait : 0);
	if (!seq->complete || seq->ndone == 0 || seq->nfailed > 0 ||
	    seq->task_wall_min < BENCH_SPEED_MIN_TASK_S ||
	    seq->task_cpu < 0.8 * busy)
		return SPEED_UNKNOWN;
	bench_advice_runs(b, &th, &pr);
	if (!bench_speed_measurable(b, th) || !bench_speed_measurable(b, pr))
		return SPEED_UNKNOWN;
	per_task = seq->task_cpu / (double)seq->ndone;
	used = (size_t)snprintf(buf, len, "the same tasks took %s of CPU "
	    "sequentially", bench_fmt_time(seq->task_cpu, t, sizeof t));
	for (int k = BENCH_SEQ + 1; k < b->nruns; k++) {
		const struct bench_run *r = &b->runs[k];
		double speed;
		bool off;

		if (!bench_speed_measurable(b, r))
			continue;
		speed = r->task_cpu / (double)r->ndone / per_task;
		off = speed > 1 + BENCH_SPEED_TOLERANCE ||
		    speed < 1 - BENCH_SPEED_TOLERANCE;
		if (bench_parallel(b, r) <= 1) {
			off_alone |= off;
			steady_alone |= !off;
		} else {
			lo = nparallel == 0 || speed < lo ? speed : lo;
			hi = nparallel == 0 || speed > hi ? speed : hi;
			slower |= speed > 1 + BENCH_SPEED_TOLERANCE;
			faster |= speed < 1 - BENCH_SPEED_TOLERANCE;
			nparallel++;
		}
		if (used < len)
			used += (size_t)snprintf(buf + used, len - used, ", %s in %s%s%s",
			    bench_fmt_time(r->task_cpu, t, sizeof t),
			    r->warm ? "the warm " : "", r->mode,
			    r->warm ? " run" : " mode");
	}
	/* Several workers faster than one, with a run of one worker as fast
	 * as the sequential run: no sequential run met slower CPUs. */
	if (off_alone || (faster && steady_alone) ||
	    ((slower || faster) && hi > lo * (1 + BENCH_SPEED_TOLERANCE))) {
		if (used < len)
			snprintf(buf + used, len - used, ": the CPUs did not run at "
			    "one speed from run to run (other guests of a virtual "
			    "machine's host, frequency scaling), so the modes do not "
			    "compare; measure again");
		return SPEED_VARIED;
	}
	if (!slower && !faster)
		return SPEED_STEADY;
	if (used < len)
		snprintf(buf + used, len - used, ": the CPUs ran them %s with "
		    "several workers busy than with one (%s), so the speed-ups over "
		    "sequential %s; the modes compare", slower ? "slower" : "faster",
		    slower ? "cores that slow each other down when all "
		    "work: a turbo budget they share, hyperthreads, memory bandwidth; "
		    "or a machine whose speed changed between the runs" :
		    "a machine whose speed changed between the runs: the "
		    "sequential run met slower CPUs",
		    slower ? "include that" : "are too high");
	return SPEED_PARALLEL;
}

/* Did R's tasks fail about as the sequential run's did?  Failing fast is
 * not running fast (a worker that cannot start fails every task at
 * once); inputs that fail in every mode alike, or a flaky task now and
 * then (a tenth of the tasks), leave the comparison fair. */
static bool
bench_failed_alike(const struct bench *b, const struct bench_run *r)
{
	size_t seq = b->runs[BENCH_SEQ].nfailed, allowed = b->ntasks / 10;

	return r->nfailed <= seq + allowed && seq <= r->nfailed + allowed;
}

/* The recommendation and its reason, in one line, from the thread run
 * TH and the process run PR; *MODE and *WORKLOAD get short names for the
 * JSON.  Not STEADY (bench_speed_check): a difference between the modes
 * may be the CPUs', so no cause is named for it. */
static void
bench_advise_from(const struct bench *b, const struct bench_run *th,
    const struct bench_run *pr, bool steady, char *buf, size_t len,
    const char **mode, const char **workload, double *ratio)
{
	const struct bench_run *seq = &b->runs[BENCH_SEQ];
	struct bench_derived ds, dt, dp;
	char t1[32], t2[32], t3[32], m1[96];
	const char *kind;
	double mean, cost;
	bool threads_wait;
	long uss;

	*mode = "none";
	*workload = "unknown";
	bench_derive(b, seq, &ds);
	/* Time spent waiting for a CPU is other processes' doing, not the
	 * job's waiting: leave it out of the classification. */
	*ratio = ds.cpu_wall;
	if (seq->rq_wait > 0 && seq->wall - seq->rq_wait > 0)
		*ratio = ds.cpu / (seq->wall - seq->rq_wait);
	if (b->ntasks == 0) {
		snprintf(buf, len, "nothing to measure: the job has no tasks");
		return;
	}
	if (!seq->complete || !th->complete || !pr->complete) {
		snprintf(buf, len, "none: the bench did not finish");
		return;
	}
	if (!bench_failed_alike(b, th) || !bench_failed_alike(b, pr)) {
		snprintf(buf, len, "none: more tasks failed in one mode than in "
		    "another (%zu sequentially, %zu in thread mode, %zu in process "
		    "mode; see above), so the modes' figures do not compare",
		    seq->nfailed, th->nfailed, pr->nfailed);
		return;
	}
	if (*ratio >= 0.8) {
		*workload = "cpu-bound";
		kind = "CPU-bound";
	} else if (*ratio <= 0.3) {
		*workload = "waiting";
		kind = "I/O-bound";
	} else {
		*workload = "mixed";
		kind = "part CPU, part waiting";
	}
	bench_derive(b, th, &dt);
	bench_derive(b, pr, &dp);
	mean = seq->task_wall / (double)seq->ndone;
	cost = th->wall > 0 ? pr->wall / th->wall - 1 : 0;
	/* What the workers add: their private pages (USS), since the pages
	 * they share with each other (libc, the plugin) are paid once. */
	uss = 0;
	for (size_t i = 0; i < pr->nwk; i++)
		uss += pr->wk[i].uss > 0 ? pr->wk[i].uss : 0;
	if (dp.peak >= 0 && dt.peak >= 0)
		snprintf(m1, sizeof m1, "%.1f MiB of private memory (%+.1f MiB RSS)",
		    (double)uss / 1024, (double)(dp.peak - dt.peak) / 1024);
	else
		snprintf(m1, sizeof m1, "an unknown amount of memory");

	if (b->ntasks == 1) {
		snprintf(buf, len, "none: one task cannot keep more than one "
		    "worker busy; give the job more inputs, or --repeat N, to "
		    "compare the modes");
		return;
	}
	if (b->workers > 1 && dt.speedup < 1.1 && dp.speedup < 1.1 &&
	    mean >= 2 * (dt.overhead < dp.overhead ? dt.overhead : dp.overhead)) {
		/* Long enough tasks, and still no gain: no free core. */
		*mode = "none";
		snprintf(buf, len, "none: neither mode ran faster than sequential "
		    "on %d workers (%.2fx, %.2fx) although each task takes %s: "
		    "the CPUs were busy with other work (load average %.2f on "
		    "%ld), or the plugin runs one task at a time; measure again "
		    "on a quiet machine", b->workers, dt.speedup, dp.speedup,
		    bench_fmt_time(mean, t1, sizeof t1), b->loadavg, b->ncpus);
		return;
	}
	if (b->workers > 1 && dt.speedup < 1.1 && dp.speedup < 1.1) {
		*mode = dp.speedup > dt.speedup ? "process" : "thread";
		snprintf(buf, len, "%s mode%s, or bigger tasks: the tasks are too "
		    "short (%s each) for %d workers to pay: each costs %s of "
		    "overhead in thread mode and %s in process mode", *mode,
		    !b->thread_safe && strcmp(*mode, "thread") == 0 ?
		    " (one worker: the plugin is not thread-safe)" : "",
		    bench_fmt_time(mean, t1, sizeof t1), b->workers,
		    bench_fmt_time(dt.overhead, t2, sizeof t2),
		    bench_fmt_time(dp.overhead, t3, sizeof t3));
		return;
	}
	if (!b->thread_safe && b->workers > 1) {
		*mode = pr->wall < th->wall ? "process" : "thread";
		snprintf(buf, len, "%s mode: %s (CPU/wall %.2f sequential); the "
		    "plugin is not thread-safe, so only process mode runs it on %d "
		    "workers: %.2fx over sequential, against %.2fx for thread mode's "
		    "one worker", *mode, kind, *ratio, b->workers, dp.speedup,
		    dt.speedup);
		return;
	}
	/* Threads that hold each other up (a lock, a GIL) wait inside their
	 * CPU-bound tasks: more wall per CPU second there than in process
	 * mode (comparable only for work on the calling thread).  Without
	 * that, a faster process run names no cause. */
	threads_wait = *ratio >= 0.8 && bench_on_calling_thread(b) &&
	    th->task_cpu > 0 && pr->task_cpu > 0 &&
	    th->task_wall / th->task_cpu > 1.1 * (pr->task_wall / pr->task_cpu);
	if (pr->wall < th->wall * 0.9 && (!steady || !threads_wait)) {
		*mode = "process";
		snprintf(buf, len, "process mode: %s (CPU/wall %.2f sequential) and "
		    "process mode was %.2fx as fast as thread mode (%.2fx against "
		    "%.2fx over sequential), with its isolation (a crash fails one "
		    "task, a runaway task is killed), for %s", kind, *ratio,
		    th->wall / pr->wall, dp.speedup, dt.speedup, m1);
		return;
	}
	if (pr->wall < th->wall * 0.9) {
		*mode = "process";
		snprintf(buf, len, "process mode: %s (CPU/wall %.2f sequential) and "
		    "process mode is %.2fx as fast as thread mode (%.2fx against "
		    "%.2fx over sequential): the plugin's threads hold each other "
		    "up (a lock, an interpreter's GIL, shared data), its processes "
		    "do not; its isolation (a crash fails one task, a runaway task "
		    "is killed) comes with it, for %s", kind, *ratio,
		    th->wall / pr->wall, dp.speedup, dt.speedup, m1);
		return;
	}
	if (pr->wall <= th->wall * 1.10) {
		*mode = "process";
		snprintf(buf, len, "process mode: %s (CPU/wall %.2f sequential) and "
		    "process mode keeps up with thread mode (%.2fx against %.2fx), so "
		    "its isolation (a crash fails one task, a runaway task is killed) "
		    "costs %+.0f%% wall and %s here", kind, *ratio,
		    dp.speedup, dt.speedup, cost * 100, m1);
		return;
	}
	*mode = "thread";
	snprintf(buf, len, "thread mode: %s (CPU/wall %.2f sequential) and thread "
	    "mode is %.2fx as fast as process mode (overhead %s against %s per "
	    "task); process mode's isolation would cost %+.0f%% wall and %s: "
	    "worth it only for an untrusted, crashy or leaky plugin",
	    kind, *ratio, pr->wall / th->wall,
	    bench_fmt_time(dt.overhead, t1, sizeof t1),
	    bench_fmt_time(dp.overhead, t2, sizeof t2), cost * 100, m1);
}

/* The recommendation from the cold runs, with the warm runs' speed-ups
 * after it when there are: how much of a difference was the pools'
 * start-up, which the daemon pays on a job's first run only.  A
 * prestarted job's runs never pay it: its advice comes from the warm
 * runs. */
static void
bench_advise(const struct bench *b, char *buf, size_t len, const char **mode,
    const char **workload, double *ratio)
{
	const struct bench_run *tw = &b->runs[BENCH_THREAD_WARM];
	const struct bench_run *pw = &b->runs[BENCH_PROCESS_WARM];
	const struct bench_run *th, *pr;
	bool warm = b->nruns > BENCH_COLD_RUNS && tw->complete && pw->complete;
	char speed[512];
	bool steady = bench_speed_check(b, speed, sizeof speed) != SPEED_VARIED;
	struct bench_derived dt, dp;
	size_t used;

	bench_advice_runs(b, &th, &pr);
	bench_advise_from(b, th, pr, steady, buf, len, mode, workload, ratio);
	if (th->warm) {
		used = strlen(buf);
		snprintf(buf + used, len - used, "; from the warm runs, as every "
		    "run of this job (prestart) finds its pool");
	} else if (warm && strcmp(*mode, "none") != 0 &&
	    bench_failed_alike(b, tw) && bench_failed_alike(b, pw)) {
		bench_derive(b, tw, &dt);
		bench_derive(b, pw, &dp);
		used = strlen(buf);
		snprintf(buf + used, len - used, "; on warm pools, as the "
		    "daemon's later runs: %.2fx in thread mode, %.2fx in "
		    "process mode", dt.speedup, dp.speedup);
	}
	/* (Not after a "none", which says why already.) */
	if (!steady && strcmp(*mode, "none") != 0) {
		used = strlen(buf);
		snprintf(buf + used, len - used, "; but the CPUs' speed varied from "
		    "run to run (see the note): measure again before relying on it");
	}
}

static void
bench_print_failures(const struct bench *b, const struct bench_run *r)
{
	if (r->nfailed == 0)
		return;
	printf("%s: %zu of %zu tasks did not succeed:\n", r->name, r->nfailed,
	    b->ntasks);
	for (size_t i = 0; i < r->nfails; i++) {
		const struct bench_fail *f = &r->fails[i];
		const char *in = b->inputs[f->index];

		if (b->job->has_inputs)
			printf("  task %zu (input %zu \"%s\"): ", f->index,
			    f->index % b->ninputs, in != NULL ? in : "");
		else
			printf("  task %zu (no input): ", f->index);
		printf("%s%s%s\n", status_name(f->status), f->error ? ": " : "",
		    f->error ? f->error : "");
	}
	if (r->nfailed > r->nfails)
		printf("  ... and %zu more\n", r->nfailed - r->nfails);
}

static void
bench_print_table(const struct bench *b)
{
	const struct jr_plugin *pl = loader_descriptor(b->job->plugin);
	char advice[1024], speed[512], c[9][32];
	const char *mode, *workload;
	double ratio;
	/* Wide enough for "process, warm" only when there is one. */
	int w = b->nruns > BENCH_COLD_RUNS ? 13 : 10;

	printf("jobrund --bench %s: plugin %s %s, %zu task%s (", b->job->name,
	    pl->name, pl->version ? pl->version : "", b->ntasks,
	    b->ntasks == 1 ? "" : "s");
	if (b->job->has_inputs)
		printf("%zu input%s", b->ninputs, b->ninputs == 1 ? "" : "s");
	else
		printf("no input");
	printf(" x %ld), %ld CPU%s, load average %.2f\n\n", b->repeat,
	    b->ncpus, b->ncpus == 1 ? "" : "s", b->loadavg);
	printf("%-*s %7s %10s %10s %8s %8s %10s %10s %10s %13s %6s\n", w, "mode",
	    "workers", "wall", "CPU", "CPU/wall", "speed-up", "tasks/s",
	    "peak RSS", "start-up", "overhead/task", "failed");
	for (int k = 0; k < b->nruns; k++) {
		const struct bench_run *r = &b->runs[k];
		struct bench_derived d;

		if (!r->ran) {
			printf("%-*s %7d  (not run: interrupted)\n", w, r->name,
			    r->workers);
			continue;
		}
		bench_derive(b, r, &d);
		snprintf(c[0], sizeof c[0], isnan(d.cpu_wall) ? "-" : "%.2f", d.cpu_wall);
		snprintf(c[1], sizeof c[1], isnan(d.speedup) ? "-" : "%.2fx", d.speedup);
		snprintf(c[2], sizeof c[2], isnan(d.tasks_s) ? "-" : "%.0f", d.tasks_s);
		printf("%-*s %7d %10s %10s %8s %8s %10s %10s %10s %13s %6zu%s\n",
		    w, r->name, r->workers, bench_fmt_time(r->wall, c[3], sizeof c[3]),
		    bench_fmt_time(d.cpu, c[4], sizeof c[4]), c[0], c[1], c[2],
		    bench_fmt_kib(d.peak, c[5], sizeof c[5]),
		    bench_fmt_time(d.startup, c[6], sizeof c[6]),
		    bench_fmt_time(d.overhead, c[7], sizeof c[7]), r->nfailed,
		    r->complete ? "" : " (incomplete)");
	}
	printf("\n");
	for (int k = 0; k < b->nruns; k++) {
		bool said = false;

		/* The warm thread run repeats the cold one's "1 worker". */
		for (int j = 0; j < k; j++)
			said |= strcmp(b->runs[j].note, b->runs[k].note) == 0;
		if (b->runs[k].note[0] != '\0' && !said)
			printf("note: %s\n", b->runs[k].note);
	}
	if (b->interrupted)
		printf("note: interrupted by a signal: the figures are partial\n");
	if (b->loadavg > 0.5 * (double)b->ncpus)
		printf("note: the machine was busy (load average %.2f on %ld "
		    "CPU%s): other work skews the comparison\n", b->loadavg,
		    b->ncpus, b->ncpus == 1 ? "" : "s");
	if (b->runs[BENCH_SEQ].rq_wait > 0.1 * b->runs[BENCH_SEQ].wall)
		printf("note: other load: the sequential run waited %s for a CPU; "
		    "the advice leaves that out of its CPU/wall\n",
		    bench_fmt_time(b->runs[BENCH_SEQ].rq_wait, c[0], sizeof c[0]));
	if (bench_speed_check(b, speed, sizeof speed) > SPEED_STEADY)
		printf("note: %s\n", speed);
	for (int k = 0; k < b->nruns; k++)
		bench_print_failures(b, &b->runs[k]);
	bench_advise(b, advice, sizeof advice, &mode, &workload, &ratio);
	printf("recommendation: %s\n\n", advice);
	printf(
"wall           from creating the pool (plugin init included) to the last result\n"
"CPU            user+sys of jobrund and its workers (getrusage SELF + CHILDREN;\n"
"               in process mode, plus the worker factory's CPU clock)\n"
"CPU/wall       cores kept busy; sequential: ~1 CPU-bound, ~0 waiting on I/O\n"
"speed-up       sequential wall / this wall\n"
"peak RSS       jobrund's peak RSS (VmHWM%s) plus each worker's peak\n"
"               (and the worker factory's, in process mode)\n"
"start-up       creating the pool to the first task starting in a worker\n"
"overhead/task  (wall x min(workers, tasks) - sum of task times) / tasks: worker\n"
"               time per task spent outside the plugin (dispatch, results, start-up)\n",
	    b->hwm_reset ? ", reset before each run" :
	    ", since jobrund started: clear_refs unavailable");
	if (b->nruns > BENCH_COLD_RUNS)
		printf(
"warm           a second run on the pool the first one started, as the daemon's\n"
"               later runs of a job find it (every run, with prestart): wall and\n"
"               start-up from starting that run; CPU is jobrund's (getrusage\n"
"               SELF) plus each worker's CPU clock over the run\n");
}

static void
bench_json_num(const char *key, double v, bool comma)
{
	if (isnan(v) || isinf(v))
		printf("\"%s\":null%s", key, comma ? "," : "");
	else
		printf("\"%s\":%.9g%s", key, v, comma ? "," : "");
}

static void
bench_json_kib(const char *key, long v, bool comma)
{
	if (v < 0)
		printf("\"%s\":null%s", key, comma ? "," : "");
	else
		printf("\"%s\":%ld%s", key, v, comma ? "," : "");
}

static void
bench_json_str(const char *key, const char *s, bool comma)
{
	printf("\"%s\":", key);
	if (s == NULL)
		printf("null");
	else
		json_write_string(stdout, s, strlen(s));
	if (comma)
		putchar(',');
}

/* KEY NULL: an array element.  STARTED: whether the process started
 * during the run (a worker), -1 to leave it out (jobrund). */
static void
bench_json_mem(const char *key, const struct bench_mem *m, int started,
    bool comma)
{
	if (key != NULL)
		printf("\"%s\":", key);
	printf("{");
	if (m->pid > 0)
		printf("\"pid\":%d,", (int)m->pid);
	if (started >= 0)
		printf("\"started_in_run\":%s,", started ? "true" : "false");
	bench_json_kib("peak_rss_kib", m->hwm, true);
	bench_json_kib("rss_kib", m->rss, true);
	bench_json_kib("uss_kib", m->uss, false);
	printf("}%s", comma ? "," : "");
}

static void
bench_print_json(const struct bench *b)
{
	const struct jr_plugin *pl = loader_descriptor(b->job->plugin);
	char advice[1024], speed[512];
	const char *mode, *workload;
	double ratio;
	size_t failed = 0;
	enum bench_speed speed_seen = bench_speed_check(b, speed, sizeof speed);
	static const char *const speed_names[] = { "steady", "parallel", "varied" };

	bench_advise(b, advice, sizeof advice, &mode, &workload, &ratio);
	printf("{");
	bench_json_str("job", b->job->name, true);
	bench_json_str("plugin", pl->name, true);
	bench_json_str("plugin_version", pl->version, true);
	printf("\"thread_safe\":%s,", b->thread_safe ? "true" : "false");
	printf("\"inputs\":%zu,\"repeat\":%ld,\"tasks\":%zu,\"workers\":%d,"
	    "\"cpus\":%ld,", b->ninputs, b->repeat, b->ntasks, b->workers, b->ncpus);
	bench_json_num("loadavg", b->loadavg, true);
	printf("\"peaks_per_run\":%s,\"interrupted\":%s,\"runs\":[",
	    b->hwm_reset ? "true" : "false", b->interrupted ? "true" : "false");
	for (int k = 0; k < b->nruns; k++) {
		const struct bench_run *r = &b->runs[k];
		struct bench_derived d;

		bench_derive(b, r, &d);
		failed += r->nfailed;
		printf("%s{", k ? "," : "");
		bench_json_str("mode", r->mode, true);
		bench_json_str("pool", k == BENCH_SEQ ? "none" : r->warm ? "warm" :
		    "cold", true);
		printf("\"workers\":%d,\"ran\":%s,\"complete\":%s,", r->workers,
		    r->ran ? "true" : "false", r->complete ? "true" : "false");
		printf("\"tasks_done\":%zu,\"failed\":%zu,", r->ndone, r->nfailed);
		bench_json_num("wall_s", r->ran ? r->wall : NAN, true);
		bench_json_num("cpu_s", r->ran ? d.cpu : NAN, true);
		/* Warm: the workers' CPU clocks do not split them. */
		bench_json_num("user_s", r->ran && !r->warm ? r->user : NAN, true);
		bench_json_num("sys_s", r->ran && !r->warm ? r->sys : NAN, true);
		bench_json_num("cpu_per_wall", d.cpu_wall, true);
		bench_json_num("speedup", d.speedup, true);
		bench_json_num("tasks_per_s", d.tasks_s, true);
		bench_json_num("startup_s", d.startup, true);
		bench_json_num("overhead_per_task_s", d.overhead, true);
		bench_json_num("task_wall_sum_s", r->task_wall, true);
		bench_json_num("task_cpu_sum_s", r->task_cpu, true);
		bench_json_num("cpu_wait_s", r->rq_wait >= 0 ? r->rq_wait : NAN, true);
		bench_json_kib("peak_rss_kib", r->ran ? d.peak : -1, true);
		bench_json_kib("workers_peak_rss_kib", r->ran ? d.workers_peak : -1, true);
		bench_json_mem("daemon", &r->self, -1, true);
		printf("\"worker_processes\":[");
		for (size_t i = 0; i < r->nwk; i++) {
			printf("%s", i ? "," : "");
			bench_json_mem(NULL, &r->wk[i],
			    !bench_was_live(r, r->wk[i].pid), false);
		}
		printf("],\"failures\":[");
		for (size_t i = 0; i < r->nfails; i++) {
			const struct bench_fail *f = &r->fails[i];
			printf("%s{\"index\":%zu,", i ? "," : "", f->index);
			bench_json_str("input", b->inputs[f->index], true);
			bench_json_str("status", status_name(f->status), true);
			bench_json_str("error", f->error, false);
			printf("}");
		}
		printf("],");
		bench_json_str("note", r->note[0] ? r->note : NULL, false);
		printf("}");
	}
	printf("],\"failed\":%zu,", failed);
	/* null: work that bench_speed_check cannot judge */
	bench_json_str("cpu_speed", speed_seen == SPEED_UNKNOWN ? NULL :
	    speed_names[speed_seen], true);
	bench_json_str("cpu_speed_note", speed_seen > SPEED_STEADY ? speed : NULL,
	    true);
	printf("\"recommendation\":{");
	bench_json_str("mode", mode, true);
	bench_json_str("workload", workload, true);
	bench_json_num("cpu_per_wall", ratio, true);
	bench_json_str("text", advice, false);
	printf("}}\n");
}

/* --- the command ------------------------------------------------------- */

/* A whole decimal from MIN to MAX, or -1. */
static long
bench_number(const char *s, long min, long max)
{
	char *end;
	long v;

	if (s == NULL || *s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (*end != '\0' || errno != 0 || v < min || v > max)
		return -1;
	return v;
}

static void
bench_free(struct bench *b)
{
	for (int k = 0; k < BENCH_NKINDS; k++) {
		for (size_t i = 0; i < b->runs[k].nfails; i++)
			free(b->runs[k].fails[i].error);
		free(b->runs[k].wk);
		free(b->runs[k].clk);
	}
	free(b->inputs);
	cfg_free(b->cfg);
}

int
bench_main(const char *file, const char *jobname, const char *workers,
    const char *repeat, bool warm, bool json, bool log_stderr)
{
	static const char *const names[BENCH_NKINDS] = {
		"sequential", "thread", "process", "thread, warm", "process, warm"
	};
	static const char *const modes[BENCH_NKINDS] = {
		"sequential", "thread", "process", "thread", "process"
	};
	struct bench b = { 0 };
	struct errlist errs = { 0 };
	struct run_hooks hooks = { 0 };
	size_t failed = 0;
	long n = 0;

	log_init("jobrund", log_stderr, LOG_WARNING);
	b.json = json;
	b.nruns = warm ? BENCH_NKINDS : BENCH_COLD_RUNS;
	b.progress = isatty(STDERR_FILENO) == 1;
	b.ncpus = sysconf(_SC_NPROCESSORS_ONLN);
	{
		/* taskset, a systemd CPUAffinity=: fewer CPUs than online. */
		cpu_set_t set;

		b.usable_cpus = sched_getaffinity(0, sizeof set, &set) == 0 ?
		    CPU_COUNT(&set) : b.ncpus;
	}
	if (getloadavg(&b.loadavg, 1) != 1)
		b.loadavg = NAN;
	b.repeat = 1;
	if (repeat != NULL &&
	    (b.repeat = bench_number(repeat, 1, (long)BENCH_TASKS_MAX)) == -1) {
		fprintf(stderr, "jobrund: --repeat %s: expected a number from 1 to %lu\n",
		    repeat, BENCH_TASKS_MAX);
		return 2;
	}
	if (workers != NULL &&
	    (n = bench_number(workers, 1, BENCH_WORKERS_MAX)) == -1) {
		fprintf(stderr, "jobrund: --workers %s: expected a number from 1 to %d\n",
		    workers, BENCH_WORKERS_MAX);
		return 2;
	}

	if ((b.cfg = cfg_load(file, &errs)) == NULL) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msgs[i]);
		errlist_free(&errs);
		return 1;
	}
	/* Per-task lines would flood the log: the table is the report. */
	log_set_level(b.cfg->log_level < LOG_WARNING ? b.cfg->log_level : LOG_WARNING);
	if ((b.job = cfg_find_job(b.cfg, jobname)) == NULL) {
		fprintf(stderr, "jobrund: %s: no job named '%s'\n", b.cfg->file, jobname);
		cfg_free(b.cfg);
		return 2;
	}
	cfg_load_plugins(b.cfg, &errs);
	if (b.job->plugin == NULL) {
		/* Only this job's problems matter here. */
		char *mine = xasprintf("job '%s'", b.job->name);
		for (size_t i = 0; i < errs.n; i++)
			if (strstr(errs.msgs[i], mine) != NULL)
				fprintf(stderr, "%s\n", errs.msgs[i]);
		free(mine);
		errlist_free(&errs);
		cfg_free(b.cfg);
		return 1;
	}
	errlist_free(&errs);
	/* A prestarted job's runs never wait for a pool to start: the warm
	 * runs are the ones that speak for it. */
	if (b.job->prestart)
		b.nruns = BENCH_NKINDS;

	b.workers = workers != NULL ? (int)n : b.job->workers;
	b.thread_safe = (loader_descriptor(b.job->plugin)->flags &
	    JR_PLUGIN_THREAD_SAFE) != 0;
	b.ninputs = b.job->has_inputs ? b.job->ninputs : 1;
	if (b.ninputs != 0 && (size_t)b.repeat > BENCH_TASKS_MAX / b.ninputs) {
		fprintf(stderr, "jobrund: --repeat %ld: %zu inputs x %ld is more than "
		    "%lu tasks\n", b.repeat, b.ninputs, b.repeat, BENCH_TASKS_MAX);
		cfg_free(b.cfg);
		return 2;
	}
	b.ntasks = b.ninputs * (size_t)b.repeat;
	b.inputs = xcalloc(b.ntasks + 1, sizeof *b.inputs);
	for (size_t i = 0; i < b.ntasks; i++)
		b.inputs[i] = b.job->has_inputs ? b.job->inputs[i % b.ninputs] : NULL;

	for (int k = 0; k < BENCH_NKINDS; k++) {
		struct bench_run *r = &b.runs[k];

		r->name = names[k];
		r->mode = modes[k];
		r->warm = k >= BENCH_COLD_RUNS;
		r->rq_wait = -1;
		r->task_wall_min = -1;
		r->def = *b.job;        /* shallow: the config owns the strings */
		r->def.inputs = b.inputs;
		r->def.ninputs = b.ntasks;
		r->def.has_inputs = true;
		r->def.mode = strcmp(r->mode, "process") == 0 ? MODE_PROCESS :
		    MODE_THREAD;
		/* One attempt per task, as in the sequential run. */
		r->def.retries = 0;
		r->workers = k == BENCH_SEQ ? 1 : b.workers;
		if (r->def.mode == MODE_THREAD && k != BENCH_SEQ &&
		    !b.thread_safe && b.workers > 1) {
			r->workers = 1;
			snprintf(r->note, sizeof r->note, "thread mode ran 1 worker, "
			    "not %d: plugin %s is not thread-safe", b.workers,
			    b.job->plugin_name);
		}
		r->def.workers = r->workers;
	}

	if (loop_init() == -1)
		fatal("epoll_create1");
	loop_signals(bench_on_signal, &b);
	/* Process pools as the daemon has them: workers forked by a worker
	 * factory started before any run, as the daemon starts it at
	 * start-up. */
	factory_apply(b.cfg, true);
	tpool_setup();
	hooks.task_done = bench_task_done;
	hooks.run_done = bench_run_done;
	hooks.arg = &b;
	run_set_hooks(&hooks);

	bench_sequential(&b);
	for (int k = BENCH_THREAD; k < b.nruns && !b.interrupted; k++)
		if (bench_pool(&b, &b.runs[k]) == -1)
			b.interrupted = true;
	if (b.progress)
		fprintf(stderr, "\r\033[K");

	if (b.json)
		bench_print_json(&b);
	else
		bench_print_table(&b);
	fflush(stdout);
	for (int k = 0; k < b.nruns; k++)
		failed += b.runs[k].nfailed;
	loop_timer_remove(b.drain);
	loop_timer_remove(b.sampler);
	loop_timer_remove(b.settle);
	tpool_shutdown();
	factory_stop();
	loop_shutdown();
	bench_free(&b);
	return failed > 0 || b.interrupted ? 3 : 0;
}
