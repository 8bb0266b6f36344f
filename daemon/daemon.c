/*
 * daemon.c - jobrund as a long-running service: start-up, the loaded
 * configs and their lifetimes, reload on SIGHUP, shutdown on SIGTERM or
 * SIGINT, and the run hooks that tie runs to the schedule (sched.c) and
 * to the run history (history.c).
 *
 * Reload.  SIGHUP (or `jobrunctl reload`) reads the file in a loader
 * thread: parsing, validation and the plugins' own checks of their
 * settings, which take tens of milliseconds for ten thousand jobs, never
 * hold up the event loop.  A file with any error changes nothing (each
 * error is logged as FILE:LINE); a good one is applied in the loop as a
 * diff (sched_apply): unchanged jobs keep everything, added jobs start,
 * removed ones drain, changed ones drain their running runs under the old
 * definition and start new ones under the new.  SIGHUPs that arrive while
 * the loader works make one more reload after it, never more: a storm of
 * them coalesces.
 *
 * Configs.  Each loaded config is a generation, freed when no runtime
 * uses one of its jobs (an unchanged job's runtime keeps its old
 * definition, so its config lives on), and when no stopped executor may
 * still look at a definition (sup_pools_stopping, tpool_threads_alive).
 * The newest generation is the configuration in force.
 *
 * Shutdown: no new runs; thread tasks are cancelled, process workers get
 * SIGTERM then SIGKILL after shutdown_grace; exit 0 once every worker is
 * reaped, or after shutdown_grace plus a second whatever is left.  A
 * second signal changes nothing.
 *
 * Memory at rest.  Start-up, reloads and runs free much of what they
 * allocate (config text and trees, task records, results), but glibc keeps
 * freed heap for reuse: it gives back only the top of a heap, and only
 * past a threshold.  So whenever the daemon falls idle (start-up done, a
 * reload applied, an old config freed, the last active run ended, a
 * `history` request answered) idle_trim runs malloc_trim once, from a
 * zero-delay timer so that it comes after whatever the moment frees (the
 * history's page cache first, and the WAL started over after a
 * checkpoint, history_idle): every free page goes back to the kernel,
 * and an idle daemon's RSS is what it holds, not what it once held (with
 * 100 jobs, 20-90 us a time; 150-300 KiB less after a round of runs).  It
 * happens at those edges only: never per task, never on a timer of its
 * own while nothing is due.
 */
#include "config.h"

#include <sys/eventfd.h>
#include <sys/epoll.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "jobrund.h"

/* A loaded config and the runtimes still using it. */
struct generation {
	struct jr_config *cfg;
	int nruntimes;
	struct generation *next;
};

/* The loader thread's work: in while it runs, out when it is joined. */
struct loader {
	pthread_t thread;
	const char *file;
	struct jr_config *cfg;          /* NULL: refused, see errs */
	struct errlist errs;
	double took;                    /* seconds */
};

/* Someone waiting for a reload's outcome (daemon_reload_async). */
struct reload_waiter {
	void (*done)(bool ok, const struct errlist *errs, void *arg);
	void *arg;
	struct reload_waiter *next;
};

static struct {
	const char *file;
	char *state_dir;                /* the history's, fixed at start-up */
	struct generation *gens;        /* newest first */
	bool stopping;
	struct loop_timer *stop_check, *stop_deadline, *gc_timer;
	struct loop_timer *trim_timer;  /* idle_trim, armed by idle_trim_soon */
	bool trim_armed;
	size_t active;                  /* runs begun and not ended */
	const char *pidfile;
	/* Reload. */
	int loader_fd;                  /* eventfd: the loader is done */
	struct loop_watch *ckpt_watch;  /* history_checkpoint_fd */
	bool loading, again;
	struct loader ld;
	struct reload_waiter *waiting;  /* for the load in progress */
	struct reload_waiter *waiting_next;     /* for the next one */
} d = { .loader_fd = -1 };

/* ------------------------------------------------------------------ */
/* Memory at rest                                                      */
/* ------------------------------------------------------------------ */

static void
idle_trim(void *arg)
{
	(void)arg;
	d.trim_armed = false;
	if (d.active == 0 && !d.stopping) {
		history_idle();
		malloc_trim(0);
	}
}

/* The daemon may have fallen idle: trim once the loop comes round. */
static void
idle_trim_soon(void)
{
	if (d.active > 0 || d.stopping || d.trim_armed || d.trim_timer == NULL)
		return;
	loop_timer_set(d.trim_timer, 0, 0);
	d.trim_armed = true;
}

/* The history's checkpointer has emptied the WAL, usually just after
 * the daemon fell idle (a run's last commit set it going): idle still,
 * the daemon starts the WAL over now, not in the next run. */
static void
checkpoint_done(int fd, uint32_t events, void *arg)
{
	(void)fd;
	(void)events;
	(void)arg;
	history_checkpoint_seen();
	idle_trim_soon();
}

/* ------------------------------------------------------------------ */
/* Generations                                                         */
/* ------------------------------------------------------------------ */

static struct generation *
gen_of(const struct jr_config *cfg)
{
	for (struct generation *g = d.gens; g; g = g->next)
		if (g->cfg == cfg)
			return g;
	return NULL;
}

/* Free the old generations nothing uses any more. */
static void
gen_collect(void *arg)
{
	struct generation **pp = &d.gens, *g;
	bool waiting = false;

	(void)arg;
	loop_timer_remove(d.gc_timer);
	d.gc_timer = NULL;
	if (d.gens == NULL)
		return;
	for (pp = &d.gens->next; (g = *pp) != NULL; ) {
		if (g->nruntimes > 0) {
			pp = &g->next;
			continue;
		}
		/* Stopped worker pools and dying thread pools still read
		 * their job's definition (and the plugin's code). */
		if (sup_pools_stopping() > 0 || tpool_threads_alive() > 0) {
			waiting = true;
			break;
		}
		double t0 = mono_now();

		*pp = g->next;
		cfg_free(g->cfg);
		free(g);
		log_debug("an old configuration of %s freed in %.1f ms", d.file,
			  (mono_now() - t0) * 1000);
	}
	if (waiting)
		d.gc_timer = loop_timer_add(0.1, 0, gen_collect, NULL);
	else
		idle_trim_soon();
}

static void
gen_collect_soon(void)
{
	if (d.gc_timer == NULL)
		d.gc_timer = loop_timer_add(0, 0, gen_collect, NULL);
}

/* sched.c made a runtime from a job of CFG. */
static void
runtime_made(const struct jr_config *cfg)
{
	struct generation *g = gen_of(cfg);

	if (g != NULL)
		g->nruntimes++;
}

/* A retired runtime is gone: its config may be unused now. */
static void
runtime_freed(const struct jr_config *cfg, void *arg)
{
	struct generation *g = gen_of(cfg);

	(void)arg;
	if (g == NULL || --g->nruntimes > 0 || g == d.gens)
		return;
	gen_collect_soon();
}

/* ------------------------------------------------------------------ */
/* Run hooks                                                           */
/* ------------------------------------------------------------------ */

static void
run_begun(struct jobrt *rt, const struct run_info *ri, void *arg)
{
	(void)arg;
	d.active++;
	sched_run_begun(rt, ri);
	history_run_begun(ri);
}

static void
run_ended(struct jobrt *rt, const struct run_info *ri, void *arg)
{
	(void)arg;
	sched_run_ended(rt, ri);
	history_run_ended(ri, jobrt_def(rt)->history_keep);
	/* run.c frees the run after this hook: idle_trim comes later. */
	if (d.active > 0 && --d.active == 0)
		idle_trim_soon();
}

static void
run_done(struct jobrt *rt, uint64_t id, size_t ntasks, size_t nfailed,
	 double wall, void *arg)
{
	(void)id; (void)ntasks; (void)nfailed; (void)wall; (void)arg;
	sched_run_done(rt);
}

/* ------------------------------------------------------------------ */
/* Reload                                                              */
/* ------------------------------------------------------------------ */

static void
log_errors(const struct errlist *errs, bool to_stderr)
{
	for (size_t i = 0; i < errs->n; i++) {
		log_msg(LOG_ERR, "%s", errs->msgs[i]);
		if (to_stderr && !log_get_stderr())
			fprintf(stderr, "jobrund: %s\n", errs->msgs[i]);
	}
}

/* Read and validate FILE, plugins included: the whole config, or NULL
 * with every error in ERRS.  Any thread. */
static struct jr_config *
load_config(const char *file, struct errlist *errs)
{
	struct jr_config *cfg = cfg_load(file, errs);

	if (cfg != NULL && cfg_load_plugins(cfg, errs) == -1) {
		cfg_free(cfg);
		cfg = NULL;
	}
	return cfg;
}

static void
call_waiters(struct reload_waiter *w, bool ok, const struct errlist *errs)
{
	while (w != NULL) {
		struct reload_waiter *next = w->next;

		w->done(ok, errs, w->arg);
		free(w);
		w = next;
	}
}

/* Make CFG, read and valid, the configuration in force. */
static void
apply(struct jr_config *cfg, double load_s, bool threaded)
{
	struct generation *g = xcalloc(1, sizeof *g);
	struct sched_diff diff;
	double t0 = mono_now();

	g->cfg = cfg;
	g->next = d.gens;
	d.gens = g;
	log_set_level(cfg->log_level);
	if (d.state_dir && strcmp(d.state_dir, cfg->state_dir) != 0)
		log_msg(LOG_WARNING, "state_dir changed to %s: the history stays in %s "
			"until jobrund restarts", cfg->state_dir, d.state_dir);
	/* A new factory: the jobrund-worker installed now, and the pools
	 * prestarted below fork from it. */
	factory_apply(cfg, false);
	sched_apply(cfg, false, &diff);
	gen_collect_soon();
	log_msg(LOG_NOTICE, "reloaded %s: %zu job%s: %zu added, %zu changed, %zu "
		"removed, %zu unchanged (read in %.1f ms%s, applied in %.1f ms)",
		d.file, diff.added + diff.changed + diff.unchanged,
		diff.added + diff.changed + diff.unchanged == 1 ? "" : "s",
		diff.added, diff.changed, diff.removed, diff.unchanged, load_s * 1000,
		threaded ? " off the event loop" : "", (mono_now() - t0) * 1000);
}

/* A load is over: apply it or say why not. */
static void
reload_finish(struct jr_config *cfg, const struct errlist *errs, double load_s,
	      bool threaded)
{
	if (cfg == NULL) {
		log_errors(errs, false);
		log_msg(LOG_ERR, "reload of %s failed (%zu error%s): keeping the running "
			"configuration", d.file, errs->n, errs->n == 1 ? "" : "s");
	} else if (d.stopping) {
		cfg_free(cfg);
	} else {
		apply(cfg, load_s, threaded);
	}
	notify_ready();
	idle_trim_soon();
}

static void *
loader_main(void *arg)
{
	struct loader *ld = arg;
	double t0 = mono_now();
	uint64_t one = 1;

	ld->cfg = load_config(ld->file, &ld->errs);
	ld->took = mono_now() - t0;
	(void)!write(d.loader_fd, &one, sizeof one);
	return NULL;
}

static void
loader_start(void)
{
	int rc;

	memset(&d.ld, 0, sizeof d.ld);
	d.ld.file = d.file;
	d.loading = true;
	d.waiting = d.waiting_next;
	d.waiting_next = NULL;
	notify_reloading();
	/* Threads inherit the main thread's mask: no signal reaches it. */
	rc = pthread_create(&d.ld.thread, NULL, loader_main, &d.ld);
	if (rc != 0) {
		/* No thread: read it here, holding up the loop this once. */
		log_msg(LOG_WARNING, "reload: cannot start a thread (%s): reading %s "
			"in the event loop", strerror(rc), d.file);
		d.loading = false;
		d.ld.cfg = load_config(d.file, &d.ld.errs);
		reload_finish(d.ld.cfg, &d.ld.errs, 0, false);
		call_waiters(d.waiting, d.ld.cfg != NULL, &d.ld.errs);
		d.waiting = NULL;
		errlist_free(&d.ld.errs);
	}
}

/* The loader is done (or must be waited for): join it and apply. */
static void
loader_join(void)
{
	struct jr_config *cfg;
	uint64_t n;
	bool ok;

	if (!d.loading)
		return;
	pthread_join(d.ld.thread, NULL);
	(void)!read(d.loader_fd, &n, sizeof n);
	d.loading = false;
	cfg = d.ld.cfg;
	ok = cfg != NULL && !d.stopping;
	reload_finish(cfg, &d.ld.errs, d.ld.took, true);
	call_waiters(d.waiting, ok, &d.ld.errs);
	d.waiting = NULL;
	errlist_free(&d.ld.errs);
	if (d.again && !d.stopping) {
		d.again = false;
		loader_start();
	}
}

static void
loader_ready(int fd, uint32_t events, void *arg)
{
	(void)fd; (void)events; (void)arg;
	loader_join();
}

/* Reload when the loader is free: now, or after the load in progress
 * (whose file may predate the request). */
static void
reload_request(const char *why)
{
	if (d.stopping)
		return;
	log_msg(LOG_NOTICE, "%s: reloading %s", why, d.file);
	if (d.loading) {
		d.again = true;
		return;
	}
	loader_start();
}

/* ------------------------------------------------------------------ */
/* Shutdown                                                            */
/* ------------------------------------------------------------------ */

static void
stop_check(void *arg)
{
	(void)arg;
	if (jobrt_count() == 0 && run_all_quiet())
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
		reload_request("SIGHUP");
		return;
	}
	if (d.stopping) {
		log_msg(LOG_NOTICE, "SIG%s: already stopping", sigabbrev_np(signo));
		return;
	}
	d.stopping = true;
	notify_stopping();
	log_msg(LOG_NOTICE, "SIG%s: stopping", sigabbrev_np(signo));
	call_waiters(d.waiting_next, false, NULL);
	d.waiting_next = NULL;
	sched_stop();
	d.stop_check = loop_timer_add(0, 0.02, stop_check, NULL);
	/* Workers get SIGKILL at shutdown_grace; a second more is for
	 * reaping them and for threads that ignore cancellation. */
	d.stop_deadline = loop_timer_add(d.gens->cfg->shutdown_grace + 1.0, 0,
					 stop_deadline, NULL);
}

/* What systemctl status shows (notify.c's STATUS= line). */
static void
status_counts(struct notify_counts *c)
{
	sched_counts(&c->jobs, &c->runs, &c->threads);
	c->processes = (size_t)sup_live_workers();
}

/* ------------------------------------------------------------------ */
/* Start-up                                                            */
/* ------------------------------------------------------------------ */

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
	struct sched_diff diff;
	static char *abs_file, *abs_pidfile;
	int n;

	log_init("jobrund", log_stderr, LOG_INFO);
	notify_init(status_counts);
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

	/* The control socket before any job: a live one means another
	 * jobrund runs here, a start-up error. */
	if (ctl_init(cfg) == -1) {
		cfg_free(cfg);
		return 1;
	}

	/* Fork before any thread exists. */
	if (daemonize)
		detach();
	if (pidfile) {
		if (write_pidfile(pidfile) == -1) {
			log_warn("cannot write pidfile %s", pidfile);
			ctl_shutdown();
			cfg_free(cfg);
			return 1;
		}
		d.pidfile = pidfile;
	}

	if (loop_init() == -1)
		fatal("epoll_create1");
	loop_signals(on_signal, NULL);
	reaper_init();
	tpool_setup();
	d.loader_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d.loader_fd == -1)
		fatal("eventfd");
	loop_add(d.loader_fd, EPOLLIN, loader_ready, NULL);
	d.trim_timer = loop_timer_new(idle_trim, NULL);
	hooks.run_begun = run_begun;
	hooks.run_ended = run_ended;
	hooks.run_done = run_done;
	hooks.rt_freed = runtime_freed;
	run_set_hooks(&hooks);

	/* The history after the fork and the signal mask: it has a thread. */
	d.state_dir = xstrdup(cfg->state_dir);
	if (history_open(cfg->state_dir) == 0)
		history_abandon();
	if (history_checkpoint_fd() != -1)
		d.ckpt_watch = loop_add(history_checkpoint_fd(), EPOLLIN,
					checkpoint_done, NULL);

	d.gens = xcalloc(1, sizeof *d.gens);
	d.gens->cfg = cfg;
	sched_init(runtime_made);
	log_msg(LOG_NOTICE, "jobrund %s started (pid %ld)", PACKAGE_VERSION, (long)getpid());
	ctl_start();
	factory_apply(cfg, false);
	sched_apply(cfg, true, &diff);
	n = (int)diff.added;
	log_msg(LOG_NOTICE, "%d job%s active from %s", n, n == 1 ? "" : "s", cfg->file);
	notify_ready();
	idle_trim_soon();

	if (loop_run() == -1)
		return 1;
	ctl_shutdown();
	factory_stop();

	/* A load in progress: wait for it, and drop what it read. */
	if (d.loading) {
		pthread_join(d.ld.thread, NULL);
		cfg_free(d.ld.cfg);
		errlist_free(&d.ld.errs);
		call_waiters(d.waiting, false, NULL);
		d.loading = false;
	}
	loop_timer_remove(d.stop_check);
	loop_timer_remove(d.stop_deadline);
	loop_timer_remove(d.gc_timer);
	loop_timer_remove(d.trim_timer);
	sched_free();
	while (d.gens) {
		struct generation *g = d.gens;
		d.gens = g->next;
		/* Runtimes still referencing a config only remain when the
		 * deadline passed with threads stuck in a plugin: leave them. */
		if (jobrt_count() == 0)
			cfg_free(g->cfg);
		free(g);
	}
	loop_remove(d.ckpt_watch);
	history_close();
	free(d.state_dir);
	close(d.loader_fd);
	if (d.pidfile)
		unlink(d.pidfile);
	notify_fini();
	tpool_shutdown();
	loop_shutdown();
	reaper_shutdown();
	free(abs_file);
	free(abs_pidfile);
	log_msg(LOG_NOTICE, "stopped");
	return 0;
}

/* ------------------------------------------------------------------ */
/* For the control socket (ctl.c): small accessors, nothing else.      */
/* ------------------------------------------------------------------ */

void
daemon_idle_soon(void)
{
	idle_trim_soon();
}

const struct jr_config *
daemon_config(void)
{
	return d.gens ? d.gens->cfg : NULL;
}

struct jobrt *
daemon_find_job(const char *name)
{
	struct sched_job *sj = sched_find(name);

	return sj ? sched_runtime(sj) : NULL;
}

double
daemon_next_fire(const char *name)
{
	struct sched_job *sj = sched_find(name);
	struct sched_info si;

	if (sj == NULL || d.stopping)
		return -1;
	sched_info(sj, &si);
	return si.next_fire;
}

int
daemon_run_job(const char *name, const struct run_observer *obs, uint64_t *run_id,
	       char *err, size_t errlen)
{
	struct sched_job *sj = sched_find(name);

	if (d.stopping) {
		snprintf(err, errlen, "jobrund is stopping: no new runs");
		return -1;
	}
	if (sj == NULL) {
		snprintf(err, errlen, "job %s is not active", name);
		return -1;
	}
	return sched_run(sj, "manual", obs, run_id, err, errlen) == -1 ? -1 : 0;
}

int
daemon_cancel_job(const char *name)
{
	struct sched_job *sj = sched_find(name);

	if (sj == NULL) {
		errno = ENOENT;
		return -1;
	}
	return sched_cancel(sj, false);
}

int
daemon_reload_from_ctl(struct errlist *errs)
{
	struct jr_config *cfg;
	double t0;

	if (d.stopping) {
		errlist_add(errs, "jobrund is stopping");
		return -1;
	}
	/* A load in progress may predate the request: finish it first. */
	loader_join();
	log_msg(LOG_NOTICE, "control: reloading %s", d.file);
	notify_reloading();
	t0 = mono_now();
	cfg = load_config(d.file, errs);
	reload_finish(cfg, errs, mono_now() - t0, false);
	return cfg == NULL ? -1 : 0;
}

void
daemon_reload_async(void (*done)(bool ok, const struct errlist *errs, void *arg),
		    void *arg)
{
	struct reload_waiter *w;

	if (d.stopping) {
		done(false, NULL, arg);
		return;
	}
	w = xcalloc(1, sizeof *w);
	w->done = done;
	w->arg = arg;
	w->next = d.waiting_next;
	d.waiting_next = w;
	reload_request("control");
}
