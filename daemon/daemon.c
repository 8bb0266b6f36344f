/*
 * daemon.c - jobrund as a long-running service: load the config, start
 * each enabled job's runtime, fire runs on their schedules, reload on
 * SIGHUP, stop cleanly on SIGTERM or SIGINT.
 *
 * Schedules:
 *   @start          one run right after start-up (and after a reload that
 *                   adds or changes the job);
 *   @every D        runs D apart on CLOCK_MONOTONIC (first one D after
 *                   start), so wall-clock jumps do not move them;
 *   cron            the next time cron_next_fire gives, as an absolute
 *                   CLOCK_REALTIME timer (re-armed after a clock jump);
 *   @manual         never by itself.
 * When a firing finds the previous run still active, `overlap` decides:
 * skip it, queue one, replace the running one, or allow both.
 *
 * Reload is transactional: the new file is parsed and validated whole,
 * plugins included, before anything changes; a broken file changes
 * nothing.  A valid one replaces every job: running runs finish under the
 * definition they started with (their runtime is retired, not killed),
 * and the old config is freed when its last runtime is.
 *
 * Shutdown: no new runs; thread tasks are cancelled, process workers get
 * SIGTERM then SIGKILL after shutdown_grace; exit 0 once every worker is
 * reaped, or after shutdown_grace plus a second whatever is left.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

/* One job's place in the daemon: its runtime and its schedule. */
struct djob {
	struct jobrt *rt;
	struct job_def *def;
	struct loop_timer *timer;
	bool pending;                   /* overlap = queue/replace: run next */
	uint64_t skipped;
};

/* A loaded config and the runtimes still using it. */
struct generation {
	struct jr_config *cfg;
	int nruntimes;
	struct generation *next;
};

static struct {
	const char *file;
	struct generation *gens;        /* newest first */
	struct djob *jobs;
	size_t njobs;
	bool stopping;
	struct loop_timer *stop_check, *stop_deadline;
	const char *pidfile;
} d;

static void schedule_next(struct djob *dj);

static void
fire(struct djob *dj)
{
	struct job_def *def = dj->def;

	if (d.stopping)
		return;
	if (jobrt_active_runs(dj->rt) > 0) {
		switch (def->overlap) {
		case OVERLAP_SKIP:
			dj->skipped++;
			log_msg(LOG_NOTICE, "job %s: previous run still active: run skipped "
				"(overlap = skip; %" PRIu64 " skipped so far)", def->name,
				dj->skipped);
			return;
		case OVERLAP_QUEUE:
			if (dj->pending)
				log_msg(LOG_NOTICE, "job %s: a run is already queued: "
					"this one is dropped", def->name);
			dj->pending = true;
			return;
		case OVERLAP_REPLACE:
			log_msg(LOG_NOTICE, "job %s: cancelling the active run to start "
				"a new one (overlap = replace)", def->name);
			dj->pending = true;
			jobrt_cancel(dj->rt, false);
			return;
		case OVERLAP_ALLOW:
			break;
		}
	}
	run_start(dj->rt);
}

static void
timer_fired(void *arg)
{
	struct djob *dj = arg;

	if (dj->def->sched == SCHED_CRON || dj->def->sched == SCHED_START) {
		loop_timer_remove(dj->timer);
		dj->timer = NULL;
	}
	fire(dj);
	if (dj->def->sched == SCHED_CRON)
		schedule_next(dj);
}

static void
schedule_next(struct djob *dj)
{
	struct job_def *def = dj->def;
	time_t next;

	switch (def->sched) {
	case SCHED_START:
		dj->timer = loop_timer_add(0, 0, timer_fired, dj);
		break;
	case SCHED_EVERY:
		dj->timer = loop_timer_add(def->every_s, def->every_s, timer_fired, dj);
		break;
	case SCHED_CRON:
		next = cron_next_fire(def->cron, NULL, time(NULL));
		if (next == (time_t)-1) {
			log_msg(LOG_WARNING, "job %s: schedule '%s' never fires",
				def->name, def->schedule);
			break;
		}
		dj->timer = loop_timer_at(next, timer_fired, dj);
		break;
	case SCHED_MANUAL:
		break;
	}
}

static struct generation *
gen_of(const struct jr_config *cfg)
{
	for (struct generation *g = d.gens; g; g = g->next)
		if (g->cfg == cfg)
			return g;
	return NULL;
}

/* A retired runtime is gone: free its config when nothing uses it. */
static void
runtime_freed(const struct jr_config *cfg, void *arg)
{
	struct generation *g = gen_of(cfg), **pp;

	(void)arg;
	if (g == NULL || --g->nruntimes > 0 || g == d.gens)
		return;
	for (pp = &d.gens; *pp != g; pp = &(*pp)->next)
		;
	*pp = g->next;
	log_debug("config generation of %s freed", g->cfg->file);
	cfg_free(g->cfg);
	free(g);
}

static void
run_ended(struct jobrt *rt, uint64_t id, size_t ntasks, size_t nfailed,
	  double wall, void *arg)
{
	(void)id; (void)ntasks; (void)nfailed; (void)wall; (void)arg;
	for (size_t i = 0; i < d.njobs; i++) {
		struct djob *dj = &d.jobs[i];
		if (dj->rt == rt && dj->pending && !d.stopping) {
			dj->pending = false;
			run_start(rt);
		}
	}
}

/* Start runtimes and schedules for every usable job of the newest config. */
static void
start_jobs(void)
{
	struct generation *g = d.gens;
	struct jr_config *cfg = g->cfg;
	size_t n = 0;

	d.jobs = xcalloc(cfg->njobs + 1, sizeof *d.jobs);
	for (size_t i = 0; i < cfg->njobs; i++) {
		struct job_def *def = &cfg->jobs[i];
		struct djob *dj;

		if (!def->enabled) {
			log_info("job %s: disabled", def->name);
			continue;
		}
		if (def->plugin == NULL)
			continue;       /* its error was logged at load */
		dj = &d.jobs[n++];
		dj->def = def;
		dj->rt = jobrt_new(def, cfg);
		g->nruntimes++;
		schedule_next(dj);
	}
	d.njobs = n;
	log_msg(LOG_NOTICE, "%zu job%s active from %s", n, n == 1 ? "" : "s", cfg->file);
}

static void
stop_jobs(bool now)
{
	for (size_t i = 0; i < d.njobs; i++) {
		loop_timer_remove(d.jobs[i].timer);
		d.jobs[i].timer = NULL;
		jobrt_retire(d.jobs[i].rt, now);
	}
	free(d.jobs);
	d.jobs = NULL;
	d.njobs = 0;
}

static void
log_errors(const struct errlist *errs, bool to_stderr)
{
	for (size_t i = 0; i < errs->n; i++) {
		log_msg(LOG_ERR, "%s", errs->msgs[i]);
		if (to_stderr && !log_get_stderr())
			fprintf(stderr, "jobrund: %s\n", errs->msgs[i]);
	}
}

static void
reload(void)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg;
	struct generation *g;

	log_msg(LOG_NOTICE, "SIGHUP: reloading %s", d.file);
	cfg = cfg_load(d.file, &errs);
	if (cfg != NULL && cfg_load_plugins(cfg, &errs) == -1) {
		cfg_free(cfg);
		cfg = NULL;
	}
	if (cfg == NULL) {
		log_errors(&errs, false);
		log_msg(LOG_ERR, "reload of %s failed (%zu error%s): keeping the running "
			"configuration", d.file, errs.n, errs.n == 1 ? "" : "s");
		errlist_free(&errs);
		return;
	}
	errlist_free(&errs);
	stop_jobs(false);
	g = xcalloc(1, sizeof *g);
	g->cfg = cfg;
	g->next = d.gens;
	d.gens = g;
	log_set_level(cfg->log_level);
	start_jobs();
	/* The previous generation may already be unused. */
	if (g->next && g->next->nruntimes == 0) {
		struct generation *old = g->next;
		g->next = old->next;
		cfg_free(old->cfg);
		free(old);
	}
	log_msg(LOG_NOTICE, "reloaded %s", d.file);
}

static void
stop_check(void *arg)
{
	(void)arg;
	if (jobrt_count() == 0 && sup_live_workers() == 0 && sup_pools_stopping() == 0 &&
	    tpool_threads_alive() == 0)
		loop_break();
}

static void
stop_deadline(void *arg)
{
	(void)arg;
	log_msg(LOG_WARNING, "shutdown: still %d worker process%s and %d thread%s "
		"busy after shutdown_grace: exiting anyway",
		sup_live_workers(), sup_live_workers() == 1 ? "" : "es",
		tpool_threads_alive(), tpool_threads_alive() == 1 ? "" : "s");
	loop_break();
}

static void
on_signal(int signo, void *arg)
{
	(void)arg;
	if (signo == SIGHUP) {
		if (!d.stopping)
			reload();
		return;
	}
	if (d.stopping) {
		log_msg(LOG_NOTICE, "SIG%s: already stopping", sigabbrev_np(signo));
		return;
	}
	d.stopping = true;
	log_msg(LOG_NOTICE, "SIG%s: stopping", sigabbrev_np(signo));
	stop_jobs(true);
	d.stop_check = loop_timer_add(0, 0.02, stop_check, NULL);
	/* Workers get SIGKILL at shutdown_grace; a second more is for
	 * reaping them and for threads that ignore cancellation. */
	d.stop_deadline = loop_timer_add(d.gens->cfg->shutdown_grace + 1.0, 0,
					 stop_deadline, NULL);
}

static int
write_pidfile(const char *path)
{
	FILE *fp;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd == -1 || (fp = fdopen(fd, "w")) == NULL) {
		if (fd != -1)
			close(fd);
		return -1;
	}
	fprintf(fp, "%ld\n", (long)getpid());
	return fclose(fp);
}

static void
detach(void)
{
	pid_t pid = fork();
	int fd;

	if (pid == -1)
		fatal("fork");
	if (pid > 0)
		_exit(0);
	setsid();
	pid = fork();
	if (pid == -1)
		fatal("fork");
	if (pid > 0)
		_exit(0);
	if (chdir("/") == -1)
		fatal("chdir /");
	fd = open("/dev/null", O_RDWR);
	if (fd != -1) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
}

/* FILE made absolute: -d changes directory to /, and SIGHUP re-reads the
 * config by name.  Caller frees. */
static char *
absolute(const char *file)
{
	char cwd[4096];

	if (file[0] == '/' || getcwd(cwd, sizeof cwd) == NULL)
		return xstrdup(file);
	return xasprintf("%s/%s", cwd, file);
}

int
daemon_main(const char *file, bool daemonize, const char *pidfile, bool log_stderr)
{
	struct errlist errs = { 0 };
	struct jr_config *cfg;
	struct run_hooks hooks = { 0 };
	static char *abs_file, *abs_pidfile;

	log_init("jobrund", log_stderr, LOG_INFO);
	file = abs_file = absolute(file);
	if (pidfile)
		pidfile = abs_pidfile = absolute(pidfile);
	d.file = file;
	cfg = cfg_load(file, &errs);
	if (cfg == NULL) {
		log_errors(&errs, true);
		fprintf(stderr, "jobrund: %s: configuration has %zu error%s\n", file,
			errs.n, errs.n == 1 ? "" : "s");
		errlist_free(&errs);
		return 1;
	}
	log_set_level(cfg->log_level);
	/* A bad plugin disables the jobs that use it, not the daemon. */
	if (cfg_load_plugins(cfg, &errs) == -1) {
		log_errors(&errs, true);
		log_msg(LOG_WARNING, "%zu error%s loading plugins: the jobs concerned are "
			"disabled", errs.n, errs.n == 1 ? "" : "s");
	}
	errlist_free(&errs);

	/* Fork before any thread exists. */
	if (daemonize)
		detach();
	if (pidfile) {
		if (write_pidfile(pidfile) == -1) {
			log_warn("cannot write pidfile %s", pidfile);
			cfg_free(cfg);
			return 1;
		}
		d.pidfile = pidfile;
	}

	if (loop_init() == -1)
		fatal("epoll_create1");
	loop_signals(on_signal, NULL);
	tpool_setup();
	hooks.run_done = run_ended;
	hooks.rt_freed = runtime_freed;
	run_set_hooks(&hooks);

	d.gens = xcalloc(1, sizeof *d.gens);
	d.gens->cfg = cfg;
	log_msg(LOG_NOTICE, "jobrund %s started (pid %ld)", PACKAGE_VERSION, (long)getpid());
	start_jobs();

	if (loop_run() == -1)
		return 1;

	loop_timer_remove(d.stop_check);
	loop_timer_remove(d.stop_deadline);
	while (d.gens) {
		struct generation *g = d.gens;
		d.gens = g->next;
		/* Runtimes still referencing a config only remain when the
		 * deadline passed with threads stuck in a plugin: leave them. */
		if (jobrt_count() == 0)
			cfg_free(g->cfg);
		free(g);
	}
	if (d.pidfile)
		unlink(d.pidfile);
	loop_shutdown();
	free(abs_file);
	free(abs_pidfile);
	log_msg(LOG_NOTICE, "stopped");
	return 0;
}
