/*
 * jobrund.h - the daemon's internal header.
 *
 * Shared types first (the parsed configuration, task results), then one
 * prototype block per .c file, headed by the file's name, in the order a
 * newcomer meets them: logging, config, loader, host API, results, the
 * event loop, runs, the two executors, the worker protocol.
 *
 * Internal functions return 0, or -1 with errno set, unless said otherwise.
 */
#ifndef JOBRUND_H
#define JOBRUND_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/types.h>
#include <syslog.h>
#include <time.h>

#include <libconfig.h>

#include "jobrund/plugin.h"

#define JR_PRINTFLIKE(f, a) __attribute__((format(printf, f, a)))
#define JR_NORETURN __attribute__((noreturn))

/* ------------------------------------------------------------------ */
/* Shared types                                                        */
/* ------------------------------------------------------------------ */

enum job_mode { MODE_THREAD, MODE_PROCESS };

enum sched_kind { SCHED_START, SCHED_EVERY, SCHED_CRON, SCHED_MANUAL };

enum overlap_policy { OVERLAP_SKIP, OVERLAP_QUEUE, OVERLAP_REPLACE, OVERLAP_ALLOW };

/* Cron runs missed while jobrund was down: forget them, or run once. */
enum catchup_policy { CATCHUP_NONE, CATCHUP_ONCE };

/* Defaults of the scheduling and history keys (jobrund.conf(5)). */
#define JR_MAX_CONCURRENT_RUNS  4       /* overlap = "allow" */
#define JR_RETRY_DELAY          1.0     /* seconds, doubled per retry... */
#define JR_RETRY_MAX_DELAY      60.0    /* ...up to this */
#define JR_HISTORY_KEEP         100     /* runs kept per job */

/* Resource limits a process-mode job may set (`rlimits = { ... }`). */
enum { JR_RLIMIT_AS, JR_RLIMIT_CPU, JR_RLIMIT_NOFILE, JR_RLIMIT_NPROC,
       JR_RLIMIT_CORE, JR_RLIMITS };

struct plugin;          /* loader.c */
struct cron_spec;       /* cron.c */

/* One job as the config defines it.  Owned by its struct jr_config; every
 * string is a copy (the libconfig tree is kept only for `settings`). */
struct job_def {
	char *name;
	char *plugin_name;
	enum job_mode mode;
	int workers;
	enum sched_kind sched;
	char *schedule;                 /* as written, for messages */
	double every_s;                 /* SCHED_EVERY */
	struct cron_spec *cron;         /* SCHED_CRON */
	char **inputs;                  /* ninputs strings; NULL when none */
	size_t ninputs;
	bool has_inputs;                /* `inputs` given (maybe empty) */
	double timeout_s;               /* 0: none */
	double kill_grace_s;
	enum overlap_policy overlap;
	int max_concurrent_runs;        /* overlap = allow: runs at once */
	int retries;                    /* per task, for failed/timeout/crashed */
	double retry_delay_s;           /* before the first retry, doubled... */
	double retry_max_delay_s;       /* ...up to this */
	char *timezone;                 /* cron: NULL = local time */
	enum catchup_policy catchup;    /* cron */
	int history_keep;               /* runs kept; the top-level default */
	bool enabled;
	bool prestart;                  /* start the pool at load, keep it full */
	int line;                       /* line of the job's group... */
	const char *file;               /* ...in this file: the config or an
					   @include (the config's paths) */
	/* Process mode: worker limits and identity. */
	int max_tasks_per_worker;       /* 0: unlimited */
	uint64_t max_rss;               /* bytes; 0: unlimited */
	int64_t rlimit[JR_RLIMITS];     /* -1: not set; see rlimit_names */
	char *user, *group;             /* NULL: jobrund's own */
	uid_t uid;                      /* valid when user is set */
	gid_t gid;                      /* valid when user or group is set */
	char **env;                     /* "NAME=value", nenv of them */
	size_t nenv;
	bool has_env;                   /* `env` given: a clean environment */
	char *cwd;                      /* NULL: jobrund's */
	size_t output_limit;            /* worker stdout/stderr kept per task */
	config_setting_t *settings;     /* in the owning config's tree; may be NULL */
	char *settings_text;            /* `settings` as libconfig text, for workers */
	struct plugin *plugin;          /* set by cfg_load_plugins; not owned */
};

/* A whole configuration.  cfg_free frees everything it holds. */
/* A file the config was read from, as libconfig names it (NULL: the
 * main file) and by the path messages give. */
struct cfg_path {
	const char *name;
	char *path;
};

#define JOB_NAME_MAX 64                 /* characters of A-Z a-z 0-9 _ . - */

struct jr_config {
	char *file;
	struct cfg_path *paths;         /* every file read */
	size_t npaths;
	char *plugin_dir;
	char *control_socket;
	char *state_dir;
	char *control_group;            /* NULL: the daemon's own group */
	bool control_readonly;          /* every local user may read */
	int log_level;                  /* LOG_ERR..LOG_DEBUG */
	double shutdown_grace;
	int history_keep;               /* runs kept per job, by default */
	bool worker_factory;            /* fork workers from a factory */
	struct job_def *jobs;
	size_t njobs;
	config_t tree;                  /* keeps settings groups alive */
	struct plugin_set *plugins;     /* loaded plugins, shared by jobs */
};

/* A list of error messages ("FILE:LINE: message"), in order. */
struct errlist {
	char **msgs;
	size_t n, cap;
};

enum task_status {
	TASK_OK, TASK_FAILED, TASK_TIMEOUT, TASK_CRASHED, TASK_KILLED,
	TASK_CANCELLED, TASK_SKIPPED,
};

/* Outputs shorter than this are kept in the result itself, not malloc'd:
 * a run of short tasks would otherwise spend a fifth of each task in
 * malloc, and free them all at its end. */
#define RESULT_OUTPUT_SMALL 24

/* The result of one task: what design.md's result JSON shows.  Its
 * output may point into itself (output_small): never copy a result by
 * value, move its output with result_move_output. */
struct task_result {
	const char *job;                /* not owned: the job's name */
	uint64_t run;
	size_t index;
	const char *input;              /* not owned; NULL: no input */
	int attempt;                    /* 1-based: 2 and up after retries */
	enum task_status status;
	char *output;                   /* owned, or output_small;
					   NUL-terminated */
	size_t output_len;
	char *error;                    /* owned; NULL when none */
	char *worker_output;            /* process mode: what the worker wrote
					   to stdout/stderr during the task;
					   owned; NULL when nothing */
	size_t worker_output_len;
	size_t worker_output_dropped;   /* bytes past the job's output_limit */
	struct timespec started;        /* CLOCK_REALTIME */
	double wall_s, cpu_s;
	enum job_mode mode;
	pid_t pid;
	int signal;                     /* TASK_CRASHED / TASK_KILLED: 0 if none */
	int exit_code;                  /* TASK_CRASHED: -1 if none */
	bool core_dumped;
	char output_small[RESULT_OUTPUT_SMALL];
};

/* ------------------------------------------------------------------ */
/* log.c - syslog plus an optional copy on stderr                      */
/* ------------------------------------------------------------------ */
void log_init(const char *ident, bool to_stderr, int level);
void log_set_level(int level);
/* HOOK sees every line logged (any thread); set it before threads start. */
void log_set_hook(void (*hook)(int priority, const char *line));
int log_get_level(void);
bool log_get_stderr(void);
bool log_enabled(int priority);
void log_msg(int priority, const char *fmt, ...) JR_PRINTFLIKE(2, 3);
void log_vmsg(int priority, const char *fmt, va_list ap) JR_PRINTFLIKE(2, 0);
void log_warn(const char *fmt, ...) JR_PRINTFLIKE(1, 2);   /* adds strerror */
void log_warnx(const char *fmt, ...) JR_PRINTFLIKE(1, 2);
void log_info(const char *fmt, ...) JR_PRINTFLIKE(1, 2);
void log_debug(const char *fmt, ...) JR_PRINTFLIKE(1, 2);
void fatal(const char *fmt, ...) JR_PRINTFLIKE(1, 2) JR_NORETURN;
void fatalx(const char *fmt, ...) JR_PRINTFLIKE(1, 2) JR_NORETURN;
int log_level_from_name(const char *name);      /* -1 if unknown */
const char *log_level_name(int level);

/* ------------------------------------------------------------------ */
/* util.c - small helpers                                              */
/* ------------------------------------------------------------------ */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) JR_PRINTFLIKE(1, 2);
static inline double
ts_to_s(const struct timespec *ts)
{
	return (double)ts->tv_sec + (double)ts->tv_nsec / 1e9;
}
double mono_now(void);                          /* CLOCK_MONOTONIC seconds */
void errlist_add(struct errlist *el, const char *fmt, ...) JR_PRINTFLIKE(2, 3);
void errlist_free(struct errlist *el);
int set_nonblock(int fd);                       /* O_NONBLOCK on; 0 or -1 */
void strv_free(char **v);                       /* a NULL-terminated malloc'd array */
/* One message of LEN bytes with NFDS (<= 4) descriptors attached
 * (SCM_RIGHTS); no SIGPIPE; FLAGS more of sendmsg's (MSG_DONTWAIT).
 * Bytes sent, or -1 with errno. */
ssize_t send_with_fds(int sock, const void *buf, size_t len, const int *fds, size_t nfds,
		      int flags);
/* Receive one message into BUF, blocking; up to MAXFDS descriptors come
 * in FDS (*NFDS of them, close-on-exec; more are closed), the message's
 * flags (MSG_TRUNC, MSG_CTRUNC) in *MSG_FLAGS.  Bytes, 0 at EOF, -1. */
ssize_t recv_with_fds(int sock, void *buf, size_t size, int *fds, size_t maxfds,
		      size_t *nfds, int *msg_flags);

/* ------------------------------------------------------------------ */
/* duration.c - "500ms", "5s", "2m", "1h", or a number of seconds      */
/* ------------------------------------------------------------------ */
/* Parse a duration string into seconds; 0 or -1 (errno EINVAL/ERANGE). */
int duration_parse(const char *text, double *seconds);
/* Parse a size: bytes, or a number with K, M, G or T (powers of 1024, an
 * optional trailing "B" or "iB"); 0 or -1 (errno EINVAL/ERANGE). */
int size_parse(const char *text, uint64_t *bytes);

/* ------------------------------------------------------------------ */
/* cron.c - 5-field cron expressions                                   */
/* ------------------------------------------------------------------ */
/* Parse SPEC ("*\/5 * * * *", "@daily", ...).  NULL on error, with a
 * reason in ERR. */
struct cron_spec *cron_parse(const char *spec, char *err, size_t errlen);
void cron_free(struct cron_spec *spec);
/* The first time strictly after NOW at which SPEC fires, in the time zone
 * TZ (NULL: local time); (time_t)-1 when none within the search horizon. */
time_t cron_next_fire(const struct cron_spec *spec, const char *tz, time_t now);

/* ------------------------------------------------------------------ */
/* config.c - read and validate the config file                        */
/* ------------------------------------------------------------------ */
/* Parse and validate FILE.  Every problem is appended to ERRS as
 * "FILE:LINE: message"; returns NULL when there was any.  Does not load
 * plugins: see cfg_load_plugins. */
struct jr_config *cfg_load(const char *file, struct errlist *errs);
/* Load every enabled job's plugin, check flags against mode, and validate
 * settings with the plugin's init.  Errors go to ERRS; returns -1 if any. */
int cfg_load_plugins(struct jr_config *cfg, struct errlist *errs);
void cfg_free(struct jr_config *cfg);
struct job_def *cfg_find_job(struct jr_config *cfg, const char *name);
const char *mode_name(enum job_mode mode);
/* The config names of the JR_RLIMIT_* limits, and their RLIMIT_* numbers. */
extern const char *const rlimit_names[JR_RLIMITS];
extern const int rlimit_resources[JR_RLIMITS];
/* The path of the file setting S was read from, for messages: one of
 * CFG's, or NULL when S comes from no file (CFG may be NULL). */
const char *cfg_setting_path(const struct jr_config *cfg, const config_setting_t *s);
/* Build a standalone libconfig tree from settings text (worker side). */
int cfg_settings_from_text(const char *text, config_t *tree, char *err, size_t errlen);

/* ------------------------------------------------------------------ */
/* loader.c - open plugins safely, check their ABI                     */
/* ------------------------------------------------------------------ */
/* Open DIR/NAME.so after checking the file, its directory and its
 * descriptor.  NULL on refusal, with the reason in ERR. */
struct plugin *loader_open(const char *dir, const char *name, char *err, size_t errlen);
void loader_close(struct plugin *p);
const struct jr_plugin *loader_descriptor(const struct plugin *p);
const char *loader_path(const struct plugin *p);

/* A set of plugins shared by a config's jobs, each loaded once. */
struct plugin_set *pluginset_new(const char *dir);
struct plugin *pluginset_get(struct plugin_set *set, const char *name,
			     char *err, size_t errlen);
void pluginset_free(struct plugin_set *set);

/* ------------------------------------------------------------------ */
/* host.c - the jr_host table and the task/job handles behind it       */
/* ------------------------------------------------------------------ */
extern const struct jr_host host_table;

/* The job handle given to init.  SETTINGS may be NULL (no settings). */
struct jr_job {
	const char *name;
	const char *file;               /* the job's file; may be NULL */
	const struct jr_config *cfg;    /* names settings' files; may be NULL */
	int line;                       /* the job's line in its file */
	config_setting_t *settings;
	struct errlist *errs;           /* setting_error appends here; may be NULL */
	int nerrors;
	char **scratch;                 /* strings handed out (freed with the job) */
	size_t nscratch;
};
void host_job_init(struct jr_job *hj, const struct job_def *def,
		   const struct jr_config *cfg, struct errlist *errs);
void host_job_release(struct jr_job *hj);

/* The task handle given to run.  Embedded in the executors' tasks. */
struct jr_task {
	const char *job;
	const char *input;
	char *out;                      /* output buffer, NUL-terminated:
					   out_small, then malloc'd */
	size_t out_len, out_cap, out_limit;
	char out_small[RESULT_OUTPUT_SMALL];
	size_t out_dropped;
	char *error;                    /* malloc'd; NULL when none */
	double deadline;                /* mono_now() seconds; 0: none */
	/* Set by the executor: polled by task_cancelled. */
	int (*cancel_check)(struct jr_task *t);
	void *cancel_arg;
};
void host_task_init(struct jr_task *t, const char *job, const char *input,
		    double timeout_s);
void host_task_release(struct jr_task *t);
/* Call the plugin's init for JOB; 0 or a positive errno. */
int host_plugin_init(const struct jr_plugin *pl, struct jr_job *hj, void **state);

/* Run one task with PL and fill R (status, output, error, times).  Used by
 * the thread executor and by the worker; R->pid/run/index are the caller's. */
void host_run_task(const struct jr_plugin *pl, void *state, struct jr_task *t,
		   struct task_result *r);
/* The same, with CPU time read from CPU_NOW (seconds) instead of the
 * calling thread's clock (the worker charges its whole process's), from
 * WALL0, the caller's reading of mono_now() just before (the worker has
 * one already: a clock read less per task). */
void host_run_task_clocked(const struct jr_plugin *pl, void *state,
			   struct jr_task *t, struct task_result *r,
			   double (*cpu_now)(void), double wall0);
/* The calling thread is about to wait: its next task reads the CPU clock
 * afresh (see host_run_task on how CPU time is measured). */
void host_timing_idle(void);
/* Route plugin log lines elsewhere (the worker sends them to the daemon). */
void host_set_log_hook(void (*hook)(int priority, const char *job, const char *msg));

/* ------------------------------------------------------------------ */
/* result.c - task results and their JSON                              */
/* ------------------------------------------------------------------ */
const char *status_name(enum task_status st);
int status_from_name(const char *name);         /* -1 if unknown */
/* Write R as one line of JSON (with '\n') to FP. */
void result_write_json(FILE *fp, const struct task_result *r);
/* A one-line human summary, for the log.  Caller frees. */
char *result_summary(const struct task_result *r);
void result_clear(struct task_result *r);
/* Set R's output to a copy of the LEN bytes at DATA (NUL added),
 * freeing what it had. */
void result_set_output(struct task_result *r, const char *data, size_t len);
/* Drop R's output (freed unless it lives in R). */
void result_clear_output(struct task_result *r);
/* Give R the malloc'd, NUL-terminated BUF of LEN bytes as its output. */
void result_adopt_output(struct task_result *r, char *buf, size_t len);
/* Move FROM's output to TO, freeing TO's; FROM is left without. */
void result_move_output(struct task_result *to, struct task_result *from);
/* Append S as a JSON string (quoted, escaped) to FP. */
void json_write_string(FILE *fp, const char *s, size_t len);

/* ------------------------------------------------------------------ */
/* outwatch.c - jobrund-worker: did a task write to stdout/stderr?      */
/* ------------------------------------------------------------------ */

/* Start watching the pipe on fd 1, before the worker takes on the job's
 * user; true when through io_uring, false when by FIONREAD.  A later
 * failure of the ring is told to LOG (may be NULL), with JOB. */
bool outwatch_start(const char *job,
		    void (*log)(int priority, const char *job, const char *text));
/* Before a task: watch again if the last task's write used the watch up. */
void outwatch_arm(void);
/* After it: true when something wrote to the pipe since outwatch_arm. */
bool outwatch_wrote(void);

/* ------------------------------------------------------------------ */
/* proto.c - the daemon <-> jobrund-worker protocol                    */
/* ------------------------------------------------------------------ */
/*
 * Frames on a stream socketpair: u32 length (of what follows, little
 * endian), u8 message type, then the message's fields.  Beside the socket
 * each worker shares one memory block with the daemon (struct proto_shm:
 * the claim word of its tasks, what it runs, its unsent results); sup.c
 * says how the two are used.  Bump PROTO_VERSION whenever a message or
 * the shared block changes; HELLO and READY carry it and a mismatch ends
 * the worker.
 */
#define PROTO_VERSION 3
#define PROTO_MAX_FRAME (16u * 1024 * 1024)
#define PROTO_MAX_BATCH 1024            /* tasks in one TASKS frame */

enum proto_type {
	MSG_HELLO = 1,  /* daemon -> worker: who you are, what to load */
	MSG_READY,      /* worker -> daemon: plugin loaded and initialised */
	MSG_FAIL,       /* worker -> daemon: cannot serve (then exits) */
	MSG_TASKS,      /* daemon -> worker: a batch of tasks to claim and run */
	MSG_CANCEL,     /* daemon -> worker: stop task ID if it runs */
	MSG_RESULT,     /* worker -> daemon: one task's result */
	MSG_LOG,        /* worker -> daemon: a plugin log line */
	MSG_ACK,        /* daemon -> worker: task ID's output has been taken */
	/* Between the daemon and the worker factory (factory.c): */
	MSG_SPAWN,      /* daemon -> factory: fork a worker (3 fds attached) */
	MSG_SPAWNED,    /* new worker's parent -> daemon: its pid (and pidfd) */
};

/* Strings are const so that senders can point at what they have; a
 * decoded message owns its strings (free with its proto_*_free) unless
 * said otherwise. */
struct msg_hello {
	uint32_t version;
	const char *job, *plugin_dir, *plugin, *settings;     /* settings may be NULL */
	const char *config_file;                              /* for messages */
	int32_t log_level;
	/* The worker's limits and identity, applied before the plugin loads. */
	int64_t rlimit[JR_RLIMITS];                     /* -1: leave as is */
	const char *user;                               /* NULL: keep */
	uint32_t uid, gid;
	bool set_gid;                                   /* user or group given */
	const char *cwd;                                /* NULL: keep */
};
struct msg_ready { uint32_t version; int32_t pid; };
struct msg_fail { const char *message; };
/* A worker the factory is to fork: its JOBRUND_WORKER sequence number,
 * the job it is for (its title, "jobrund-worker: JOB") and its whole
 * environment.  Decoded, ENV is NULL-terminated and it and its strings
 * are one allocation. */
struct msg_spawn {
	uint64_t seq;
	const char *job;
	uint32_t nenv;
	const char **env;
};
/* The answer: the worker's pid, or the errno of the fork that failed. */
struct msg_spawned { uint64_t seq; int32_t pid; int32_t error; };
/* Tasks FIRST .. FIRST + COUNT - 1 of a worker's sequence (1 <= COUNT <=
 * PROTO_MAX_BATCH).  Decoded, INPUTS and its strings are one allocation. */
struct msg_tasks {
	uint64_t first;
	uint32_t count;
	double timeout_s;                       /* per task; 0: none */
	const char **inputs;                    /* NULL entries: no input */
};
struct msg_cancel { uint64_t id; };
struct msg_ack { uint64_t id; };
/* RESULT flags. */
#define PROTO_RESULT_OUTPUT 1u  /* the task may have written to stdout or
				   stderr: the daemon takes what the pipe
				   holds for it, then sends ACK */
/* A decoded result borrows OUTPUT and ERROR from the frame (not
 * NUL-terminated; valid while the frame is): nothing to free. */
struct msg_result {
	uint64_t id;
	uint32_t status;                /* enum task_status */
	uint32_t flags;                 /* PROTO_RESULT_* */
	const char *output; size_t output_len;
	const char *error; size_t error_len;  /* error NULL: none */
	int64_t started_sec; int32_t started_nsec;
	double wall_s, cpu_s;
};
struct msg_log { int32_t priority; const char *text; };

/*
 * The block a worker shares with the daemon: a memfd the daemon creates,
 * passed as fd 4 and mapped MAP_SHARED by both (the worker closes the fd
 * and keeps the mapping from its children).  The daemon treats what the
 * worker writes here as untrusted, like the socket.
 */
struct proto_shm {
	/* Which tasks may start: limit << 32 | next, both mod 2^32.  The
	 * worker claims task NEXT with a compare-and-swap to NEXT + 1 while
	 * next != limit; the daemon grants by raising LIMIT, revokes the
	 * unstarted by lowering it to NEXT, and after a revocation grants
	 * from past the ids it took back (moving NEXT up), so that no id is
	 * granted twice.  Tasks below NEXT have been claimed, but the last
	 * one claimed is not always NEXT - 1. */
	_Atomic uint64_t claim;
	/* What the worker runs: RUN_SEQ is the task's id + 1 (0: none),
	 * RUN_START its CLOCK_MONOTONIC start in ns; RUN_GEN is odd while
	 * the worker changes them (a seqlock). */
	_Atomic uint64_t run_gen, run_seq, run_start;
	/* Bumped by the daemon before and after each read of the worker's
	 * output pipe: a task that saw it move may have written output. */
	_Atomic uint64_t out_gen;
	/* Bytes of whole RESULT frames in SPOOL not yet known to be sent:
	 * what a worker that dies leaves here is read by the daemon. */
	_Atomic uint64_t spool_len;
};
#define PROTO_SHM_HEAD 4096                     /* struct proto_shm, padded */
_Static_assert(sizeof(struct proto_shm) <= PROTO_SHM_HEAD,
	       "struct proto_shm must fit before the spool");
/* Shared between processes, the words must be lock-free: a lock would
 * live in each process's own memory and guard nothing. */
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0),
	       "64-bit atomics must be lock-free to be shared with a worker");
#define PROTO_SPOOL_SIZE (1024u * 1024)
#define PROTO_SHM_SIZE (PROTO_SHM_HEAD + PROTO_SPOOL_SIZE)
#define PROTO_SHM_SPOOL(shm) ((uint8_t *)(shm) + PROTO_SHM_HEAD)
/* Pack and unpack the claim word; the 64-bit value of a 32-bit count
 * that lies in [REF, REF + 2^32). */
static inline uint64_t proto_claim(uint64_t next, uint64_t limit)
{ return (uint64_t)(uint32_t)limit << 32 | (uint32_t)next; }
static inline uint64_t proto_claim_next(uint64_t word, uint64_t ref)
{ return ref + (uint32_t)((uint32_t)word - (uint32_t)ref); }
static inline uint64_t proto_claim_limit(uint64_t word, uint64_t ref)
{ return ref + (uint32_t)((uint32_t)(word >> 32) - (uint32_t)ref); }

/* An output buffer holding whole frames. */
struct pbuf { uint8_t *data; size_t len, cap; };
void pbuf_free(struct pbuf *b);

void proto_put_hello(struct pbuf *b, const struct msg_hello *m);
void proto_put_ready(struct pbuf *b, const struct msg_ready *m);
void proto_put_fail(struct pbuf *b, const struct msg_fail *m);
void proto_put_spawn(struct pbuf *b, const struct msg_spawn *m);
void proto_put_spawned(struct pbuf *b, const struct msg_spawned *m);
void proto_put_tasks(struct pbuf *b, const struct msg_tasks *m);
/* A TASKS frame built one input at a time: begin, add each, end. */
size_t proto_tasks_begin(struct pbuf *b, uint64_t first, double timeout_s);
void proto_tasks_add(struct pbuf *b, const char *input);
void proto_tasks_end(struct pbuf *b, size_t at, uint32_t count);
void proto_put_cancel(struct pbuf *b, const struct msg_cancel *m);
void proto_put_ack(struct pbuf *b, const struct msg_ack *m);
void proto_put_result(struct pbuf *b, const struct msg_result *m);
/* The bytes proto_put_result adds for M. */
size_t proto_result_size(const struct msg_result *m);
void proto_put_log(struct pbuf *b, const struct msg_log *m);

/* Decode one frame's payload (after the type byte) into M, allocating its
 * strings (free with its proto_*_free; a RESULT borrows them from P
 * instead).  0, or -1 with errno EPROTO when the payload is malformed (M
 * then holds nothing to free). */
int proto_get_hello(const uint8_t *p, size_t len, struct msg_hello *m);
int proto_get_ready(const uint8_t *p, size_t len, struct msg_ready *m);
int proto_get_fail(const uint8_t *p, size_t len, struct msg_fail *m);
int proto_get_tasks(const uint8_t *p, size_t len, struct msg_tasks *m);
int proto_get_cancel(const uint8_t *p, size_t len, struct msg_cancel *m);
int proto_get_ack(const uint8_t *p, size_t len, struct msg_ack *m);
int proto_get_result(const uint8_t *p, size_t len, struct msg_result *m);
int proto_get_log(const uint8_t *p, size_t len, struct msg_log *m);
int proto_get_spawn(const uint8_t *p, size_t len, struct msg_spawn *m);
int proto_get_spawned(const uint8_t *p, size_t len, struct msg_spawned *m);
void proto_spawn_free(struct msg_spawn *m);
void proto_hello_free(struct msg_hello *m);
void proto_fail_free(struct msg_fail *m);
void proto_tasks_free(struct msg_tasks *m);
void proto_log_free(struct msg_log *m);
/* The frame at *OFF of BUF (LEN bytes): 1 with TYPE/PAYLOAD/PLEN and *OFF
 * moved past it, 0 when it is incomplete, -1 (errno EMSGSIZE or EPROTO)
 * when the bytes are no frame. */
int proto_next_frame(const uint8_t *buf, size_t len, size_t *off, uint8_t *type,
		     const uint8_t **payload, size_t *plen);

/* A connection: a receive buffer and a queue of frames to send. */
struct pconn {
	int fd;
	uint8_t *rbuf; size_t rlen, rcap, rskip;
	struct pbuf out; size_t out_off;
};
void pconn_init(struct pconn *c, int fd);
void pconn_free(struct pconn *c);               /* does not close fd */
/* Read what is available (one read).  >0 bytes read, 0 at EOF, -1 on
 * error (EAGAIN when nothing is there on a non-blocking fd). */
ssize_t pconn_read(struct pconn *c);
/* The next complete frame: 1 and TYPE/PAYLOAD/LEN (valid until the next
 * pconn_read), 0 when more bytes are needed, -1 (errno EMSGSIZE or
 * EPROTO) when the stream is corrupt. */
int pconn_next(struct pconn *c, uint8_t *type, const uint8_t **payload, size_t *len);
/* Send queued frames: 0 when all are written, 1 when some remain (EAGAIN),
 * -1 on error. */
int pconn_flush(struct pconn *c);

/* ------------------------------------------------------------------ */
/* loop.c - the main event loop (epoll), for the main thread only       */
/* ------------------------------------------------------------------ */
typedef void (*loop_fd_cb)(int fd, uint32_t events, void *arg);
typedef void (*loop_timer_cb)(void *arg);
struct loop_watch;
struct loop_timer;
int loop_init(void);
void loop_shutdown(void);
/* Watch FD for EVENTS (EPOLLIN...); the loop does not own FD. */
struct loop_watch *loop_add(int fd, uint32_t events, loop_fd_cb cb, void *arg);
void loop_modify(struct loop_watch *w, uint32_t events);
/* Stop watching; safe from inside any callback. */
void loop_remove(struct loop_watch *w);
/* A one-shot (INTERVAL 0) or periodic timer on CLOCK_MONOTONIC. */
struct loop_timer *loop_timer_add(double after_s, double interval_s,
				  loop_timer_cb cb, void *arg);
/* A one-shot timer at an absolute CLOCK_REALTIME time (cron). */
struct loop_timer *loop_timer_at(time_t when, loop_timer_cb cb, void *arg);
void loop_timer_remove(struct loop_timer *t);
/* Seconds until T next fires; -1 when it will not (or T is NULL). */
double loop_timer_remaining(const struct loop_timer *t);
/* A CLOCK_MONOTONIC timer created disarmed, to be armed (and re-armed,
 * and disarmed) with loop_timer_set.  AFTER_S < 0 disarms.  No timer
 * holds a descriptor of its own (loop.c). */
struct loop_timer *loop_timer_new(loop_timer_cb cb, void *arg);
void loop_timer_set(struct loop_timer *t, double after_s, double interval_s);
/* Block SIGINT, SIGTERM, SIGHUP (and ignore SIGPIPE) in the calling
 * thread, which threads created later inherit, and deliver them to CB
 * through a signalfd.  Call before starting any thread. */
void loop_signals(void (*cb)(int signo, void *arg), void *arg);
/* Dispatch events until loop_break; returns 0, or -1 on epoll failure. */
int loop_run(void);
void loop_break(void);

/* ------------------------------------------------------------------ */
/* run.c - a job's runtime and its runs                                */
/* ------------------------------------------------------------------ */
struct run;
struct jobrt;

/* One task of a run: shared between run.c and the executors. */
struct task {
	struct task_result result;      /* index, input, attempt: there */
	struct run *run;
	struct task *next;              /* executor queues */
	void *exec_priv;                /* executor's own (the worker serving it) */
	struct loop_timer *retry_timer; /* waiting to be tried again */
	int cancel;                     /* atomic: set by the main thread */
	bool done;
};

/* A run as the daemon records it (history.c).  TASKS (ntasks of them, in
 * index order) and the end fields are set for run_ended only. */
struct run_info {
	const char *job;
	uint64_t id;
	const char *trigger;            /* "schedule", "start", "manual", ... */
	struct timespec started, ended; /* CLOCK_REALTIME */
	double wall_s;
	size_t ntasks, nok, nfailed;    /* nfailed: every status but ok */
	bool cancelled;                 /* jobrt_cancel reached it */
	const struct task *tasks;
};

/* What the front end (--once or the daemon) hears about. */
struct run_hooks {
	/* A run began (before any task is submitted) / is over (before
	 * run_done; the run still counts in jobrt_active_runs). */
	void (*run_begun)(struct jobrt *rt, const struct run_info *ri, void *arg);
	void (*run_ended)(struct jobrt *rt, const struct run_info *ri, void *arg);
	void (*task_done)(const struct task_result *r, void *arg);
	void (*run_done)(struct jobrt *rt, uint64_t run_id, size_t ntasks,
			 size_t nfailed, double wall_s, void *arg);
	/* A retired runtime was freed; CFG was its config. */
	void (*rt_freed)(const struct jr_config *cfg, void *arg);
	void *arg;
};
void run_set_hooks(const struct run_hooks *hooks);

/* Observers: besides the front end's one set of hooks, any number of
 * parties may hear about runs (the control socket's clients, ...).  One
 * added with run_observe hears about every run, one given to
 * run_start_observed about that run alone.  Called in the main thread,
 * after the hooks; RT is valid during the call.  run_started comes from
 * inside run_start, before any task is submitted. */
struct run_observer {
	void (*run_started)(struct jobrt *rt, uint64_t run_id, size_t ntasks, void *arg);
	void (*task_done)(struct jobrt *rt, const struct task_result *r, void *arg);
	void (*run_done)(struct jobrt *rt, uint64_t run_id, size_t ntasks,
			 size_t nfailed, double wall_s, void *arg);
	void *arg;
};
/* OBS is not copied: it must stay valid until run_unobserve. */
void run_observe(const struct run_observer *obs);
void run_unobserve(const struct run_observer *obs);

/* A job's runtime: its executor and runs.  DEF must outlive it. */
struct jobrt *jobrt_new(struct job_def *def, const struct jr_config *cfg);
/* For a job with `prestart` (and enabled): start its pool now rather
 * than at its first run, and keep it full (the daemon calls it; --once
 * and --bench do not). */
void jobrt_prestart(struct jobrt *rt);
/* Cancel its runs, stop its executor; freed once its runs have ended
 * (immediately when idle).  NOW (shutdown): process workers get SIGTERM
 * at once and SIGKILL after shutdown_grace, instead of a polite cancel. */
void jobrt_retire(struct jobrt *rt, bool now);
/* Retire without cancelling (reload): no new runs; the running ones go
 * on, retries included, and the runtime is freed after the last. */
void jobrt_drain(struct jobrt *rt);
bool jobrt_retired(const struct jobrt *rt);
/* Run numbers: the next run is LAST + 1. */
void jobrt_set_last_run_id(struct jobrt *rt, uint64_t last);
uint64_t jobrt_last_run_id(const struct jobrt *rt);
/* A pointer for the front end (the daemon's schedule entry). */
void jobrt_set_owner(struct jobrt *rt, void *owner);
void *jobrt_owner(const struct jobrt *rt);
struct job_def *jobrt_def(const struct jobrt *rt);
int jobrt_active_runs(const struct jobrt *rt);
const struct jr_config *jobrt_config(const struct jobrt *rt);
/* Start a run of the job's tasks; returns its number. */
uint64_t run_start(struct jobrt *rt);
/* The same, with OBS (copied; may be NULL) told about this run alone. */
uint64_t run_start_observed(struct jobrt *rt, const struct run_observer *obs);
/* Both, saying why the run starts (TRIGGER: a static string kept in the
 * history; run_start and run_start_observed say "manual"). */
uint64_t run_start_ex(struct jobrt *rt, const char *trigger,
		      const struct run_observer *obs);
/* The job's executor: its thread pool (NULL in process mode or when its
 * plugin's init failed) or its worker pool (NULL in thread mode). */
struct tpool *jobrt_tpool(const struct jobrt *rt);
struct sup_pool *jobrt_sup(const struct jobrt *rt);
/* Cancel every run of the job (queued tasks end `cancelled`); NOW as
 * for jobrt_retire. */
void jobrt_cancel(struct jobrt *rt, bool now);
/* Called by the executors, in the main thread, when TASK has its result. */
void run_task_done(struct task *task);
/* How many runtimes exist (retired ones included): for shutdown. */
int jobrt_count(void);
/* Whether everything the executors started has ended (workers reaped,
 * pools freed, pool threads exited, adopted processes reaped); once the
 * rest is gone, kills the adopted processes that remain.  For exit. */
bool run_all_quiet(void);

/* ------------------------------------------------------------------ */
/* tpool.c - the thread executor                                       */
/* ------------------------------------------------------------------ */
struct tpool;
/* Set up the completion eventfd in the loop; once, before any pool.
 * tpool_shutdown closes it, before loop_shutdown, when no pool is left. */
void tpool_setup(void);
void tpool_shutdown(void);
/* A pool for job DEF of up to its `workers` threads, started as tasks
 * arrive (plugin init happens here, in the daemon).  NULL when init
 * fails, with the reason in ERR. */
struct tpool *tpool_new(struct job_def *def, const struct jr_config *cfg,
			char *err, size_t errlen);
void tpool_submit(struct tpool *tp, struct task *task);
/* Start all its threads now, not as tasks arrive (`prestart`). */
void tpool_prestart(struct tpool *tp);
/* Queue the N tasks of the array TASKS at once (one lock, one wake-up):
 * consecutive tasks of ONE run (a cancel takes a queued span whole). */
void tpool_submit_many(struct tpool *tp, struct task *tasks, size_t n);
/* Cancel every task of RUN the pool has not finished: queued and claimed
 * ones end `cancelled` now, running ones are asked to stop (their flags
 * are set: the caller has set each task's cancel flag first). */
struct run;
void tpool_cancel_run(struct tpool *tp, const struct run *run);
/* Ask threads to stop after their task; frees when they have. */
void tpool_free(struct tpool *tp);
/* A thread of the pool was given up as stuck in the plugin and has not
 * come back: the pool runs nothing until it does. */
bool tpool_stuck(struct tpool *tp);
/* Threads of stopped pools still inside a plugin (for shutdown). */
int tpool_threads_alive(void);
/* What a pool's threads are doing, one call of CB per thread. */
struct tpool_thread_info {
	pid_t tid;                      /* 0 until the thread has started */
	bool busy;
	uint64_t run;                   /* busy: the task's run and index */
	size_t index;
	uint64_t done;                  /* tasks finished */
};
void tpool_foreach_thread(struct tpool *tp,
			  void (*cb)(const struct tpool_thread_info *ti, void *arg),
			  void *arg);

/* ------------------------------------------------------------------ */
/* sup.c - the process executor (supervised jobrund-worker processes)  */
/* ------------------------------------------------------------------ */
struct sup_pool;
struct sup_pool *sup_new(struct job_def *def, const struct jr_config *cfg);
void sup_submit(struct sup_pool *sp, struct task *task);
/* Submit a run's N TASKS in one go (as many sup_submit). */
void sup_submit_many(struct sup_pool *sp, struct task *tasks, size_t n);
/* Start its `workers` worker processes now, and from now on replace any
 * that exits while the pool is not stopping (`prestart`); again after a
 * suspension (a reload). */
void sup_prestart(struct sup_pool *sp);
/* Cancel TASK: queued, it ends at once; running, the worker is asked to
 * stop it, then SIGTERM and SIGKILL follow kill_grace apart.  NOW: SIGTERM
 * at once, SIGKILL after the config's shutdown_grace. */
void sup_cancel(struct sup_pool *sp, struct task *task, bool now);
/* Stop every worker: SIGTERM, SIGKILL after GRACE seconds; the pool
 * frees itself when the last one is reaped. */
void sup_free(struct sup_pool *sp, double grace_s);
/* Workers alive across all pools, and stopped pools not yet freed: both
 * 0 when the process executor has nothing left (for shutdown). */
int sup_live_workers(void);
int sup_pools_stopping(void);
/* A run of the pool's job ended: kill what idle workers' tasks left
 * running and replace those workers. */
void sup_run_ended(struct sup_pool *sp);
/* Is PID one of our workers; is the worker with tag number SEQ alive? */
bool sup_is_worker(pid_t pid);
bool sup_worker_seq_alive(unsigned long seq);
const char *sup_worker_path(void);
/* Variables of the daemon's environment that speak to it alone (systemd's
 * sockets, our own tags): never passed to a worker. */
bool sup_daemon_only_variable(const char *var);
/* Attributes for a child of the daemon: an empty signal mask, default
 * dispositions (we block what our signalfd reads), its own process
 * group.  posix_spawnattr_destroy when done. */
void sup_spawnattr_init(posix_spawnattr_t *attr);

/* factory.c: the worker factory, a jobrund-worker that forks workers. */
#define FACTORY_ARG "--factory"                 /* its argv[1] */
#define FACTORY_MAX_REQUEST (128 * 1024)        /* a SPAWN frame, at most */
#define FACTORY_UNAVAILABLE 1                   /* factory_ask: exec it */
#define FACTORY_LOST 2                          /* ...with new descriptors */
#define FACTORY_BUSY 3                          /* collect answers first */
#define FACTORY_PIPELINE 16                     /* requests unanswered, at most */
/* At start-up and reload: (re)start the factory if CFG wants one and
 * has an enabled process-mode job (or FORCE: --bench will want it). */
void factory_apply(const struct jr_config *cfg, bool force);
void factory_stop(void);
pid_t factory_pid(void);                        /* 0: none */
/* Ask the factory to fork a worker for JOB with ENVP, tagged SEQ, its
 * FDS (socket end, output pipe, memory block) attached: 0 when asked;
 * FACTORY_UNAVAILABLE when nothing was asked and the caller must exec
 * the worker itself; FACTORY_BUSY when FACTORY_PIPELINE requests (or as
 * many as its socket holds) wait for their answers.  Several may be
 * asked before the first answer is read, so that the factory forks one
 * while the daemon sets up the one before; every request must have its
 * factory_answer before the loop runs again (so the reaper meets no
 * worker whose pid is unknown). */
int factory_ask(unsigned long seq, const char *job, char *const envp[],
		const int fds[3]);
/* The answer to request SEQ, the oldest unanswered: 0 with *PID and
 * *PIDFD; -1 with errno when the system has no process or memory for
 * it; FACTORY_LOST when the factory failed after it was asked (and is
 * gone): its FDS may have reached a process, which will exit when the
 * caller closes its ends, so exec the worker with new ones. */
int factory_answer(unsigned long seq, pid_t *pid, int *pidfd);
/* worker_factory.c, in jobrund-worker: serve the daemon's requests;
 * returns only in a new worker. */
void factory_main(int argc, char **argv);
/* What a pool's workers are doing, one call of CB per worker. */
struct sup_worker_info {
	pid_t pid;
	const char *state;              /* "starting", "idle", "busy" */
	bool stopping;                  /* retired, on its way out */
	bool busy;                      /* running the task below */
	uint64_t run;
	size_t index;
	int tasks_done;
};
void sup_foreach_worker(struct sup_pool *sp,
			void (*cb)(const struct sup_worker_info *wi, void *arg),
			void *arg);
/* Send SIG to every worker's process group, calling CB (may be NULL) with
 * each worker's pid; returns how many.  A busy worker that dies of it
 * ends its task `killed`. */
int sup_kill(struct sup_pool *sp, int sig, void (*cb)(pid_t pid, void *arg), void *arg);

/* ------------------------------------------------------------------ */
/* reaper.c - processes that escaped their worker                       */
/* ------------------------------------------------------------------ */
/* Become a child subreaper and watch SIGCHLD; in the main thread, before
 * any other thread starts. */
void reaper_init(void);
/* Close the SIGCHLD signalfd (after loop_shutdown). */
void reaper_shutdown(void);
/* Reap adopted processes that exited; kill those whose worker is gone. */
void reaper_scan(void);
/* Kill the adopted processes whose JOBRUND_WORKER tag MATCH accepts
 * (NULL: all), logging WHY. */
void reaper_kill_matching(bool (*match)(const char *worker_tag, void *arg),
			  void *arg, const char *why);
/* Kill every adopted process (exit). */
void reaper_kill_all(void);
/* Adopted processes (not workers) still children of ours. */
int reaper_adopted(void);

/* ------------------------------------------------------------------ */
/* history.c - the run history (SQLite, STATE_DIR/history.db)          */
/* ------------------------------------------------------------------ */
/*
 * Everything here is for the main thread.  Without a database (it could
 * not be opened: logged), writes do nothing and queries fail with ENODEV.
 */
enum run_status { RUN_RUNNING, RUN_OK, RUN_FAILED, RUN_CANCELLED, RUN_ABANDONED };
const char *run_status_name(enum run_status st);
int run_status_from_name(const char *name);     /* -1 if unknown */
/* A run's status from how it ended: ok when every task was, else
 * cancelled when jobrt_cancel reached it, else failed. */
enum run_status run_info_status(const struct run_info *ri);

/* One run as history_list reports it.  Strings are valid during the
 * callback only. */
struct history_run {
	const char *job;
	uint64_t run;
	const char *trigger;            /* "schedule", "start", "catchup", "manual"... */
	enum run_status status;
	double started, ended;          /* Unix seconds; ended 0 while running */
	size_t ntasks, nok, nfailed;    /* nok/nfailed 0 while running */
};

/* Open (creating them: directories mode 0750) STATE_DIR/history.db; 0,
 * or -1 (logged: jobrund then runs without history).  After any fork. */
int history_open(const char *state_dir);
void history_close(void);
bool history_available(void);
/* Start-up: mark the runs left `running` by a previous jobrund
 * `abandoned` (logged); how many. */
int history_abandon(void);
/* The highest run number of JOB on record; 0 when none. */
uint64_t history_last_run_id(const char *job);
/* The last cron time JOB handled: 0 and *WHEN, or -1 (ENOENT). */
int history_last_fire(const char *job, time_t *when);
void history_set_last_fire(const char *job, time_t when);
/* Record a run's start (status running) / its end with its tasks, keeping
 * the KEEP newest ended runs of its job (0: all), in one transaction. */
void history_run_begun(const struct run_info *ri);
void history_run_ended(const struct run_info *ri, int keep);
/* Group the writes in between into one transaction (they nest). */
void history_batch_begin(void);
void history_batch_end(void);
/* The daemon has fallen idle (daemon.c): give back the page cache's
 * memory, and start the WAL over if a checkpoint has emptied it. */
void history_idle(void);
/* Readable when the checkpointer has emptied the WAL (-1: no
 * checkpointer); history_checkpoint_seen reads it, and the next
 * history_idle starts the WAL over (an idle daemon calls it at once). */
int history_checkpoint_fd(void);
void history_checkpoint_seen(void);
/* Write latency so far (every write transaction). */
void history_stats(uint64_t *nwrites, double *mean_ms, double *max_ms);

/*
 * Queries, for the control socket.  history_list calls CB for each of
 * JOB's LIMIT newest runs (JOB NULL: every job's, by start time; LIMIT 0:
 * all), newest first, and returns how many, or -1 (errno ENODEV: no
 * history; EIO: a database error, logged).  history_tasks calls CB for
 * each task of run RUN of JOB, in index order, with the stored result
 * (the fields of the result JSON; strings valid during the callback),
 * and returns how many (0 for a run that is still running or was
 * abandoned: tasks are written when a run ends), or -1 (errno ENOENT: no
 * such run; ENODEV, EIO as above).
 */
int history_list(const char *job, int limit,
		 void (*cb)(const struct history_run *hr, void *arg), void *arg);
int history_tasks(const char *job, uint64_t run,
		  void (*cb)(const struct task_result *r, void *arg), void *arg);

/* ------------------------------------------------------------------ */
/* sched.c - schedules, overlap, catch-up, the reload diff              */
/* ------------------------------------------------------------------ */
struct sched_job;
struct sched_diff {
	size_t added, changed, removed, unchanged;
};
/* What sched_info reports about a job. */
struct sched_info {
	int active_runs;                /* its older definitions' included */
	bool pending;                   /* a queued run waits */
	uint64_t skipped;               /* firings skipped by overlap */
	uint64_t last_run_id;
	time_t last_fire;               /* cron: last time handled; else 0 */
	double next_fire;               /* CLOCK_REALTIME seconds; -1: none */
};
/* RT_MADE is told of each runtime made, with its config (daemon.c keeps
 * configs alive while runtimes use them). */
void sched_init(void (*rt_made)(const struct jr_config *cfg));
/* Make CFG's enabled jobs with a loaded plugin the active ones: see
 * sched.c for the diff.  STARTUP: the first, with catch-up. */
void sched_apply(struct jr_config *cfg, bool startup, struct sched_diff *diff);
/* Shutdown: no timers, no new runs; every run cancelled (NOW), every
 * runtime retired. */
void sched_stop(void);
void sched_free(void);
/* The run hooks, forwarded by daemon.c. */
void sched_run_begun(struct jobrt *rt, const struct run_info *ri);
void sched_run_ended(struct jobrt *rt, const struct run_info *ri);
void sched_run_done(struct jobrt *rt);
/* The active job NAME; NULL when there is none. */
struct sched_job *sched_find(const char *name);
/* The job a runtime belongs to; NULL for a removed job's last runs. */
struct sched_job *sched_owner(const struct jobrt *rt);
/* Its runtime (made now if not yet; NULL only when stopping). */
struct jobrt *sched_runtime(struct sched_job *sj);
const struct job_def *sched_def(const struct sched_job *sj);
void sched_info(const struct sched_job *sj, struct sched_info *si);
/* Start a run now as the overlap policy allows (TRIGGER: static, e.g.
 * "manual"): 0 and *RUN_ID when it started; 1 and the number it will
 * have when it waits for the active runs to be cancelled (replace); -1
 * with a reason in ERR (errno EBUSY: refused by skip, queue or
 * max_concurrent_runs; ESHUTDOWN: stopping).  OBS (copied) hears about
 * that run; if a waiting run never starts, OBS->run_done is called with
 * RT NULL and RUN_ID 0. */
int sched_run(struct sched_job *sj, const char *trigger, const struct run_observer *obs,
	      uint64_t *run_id, char *err, size_t errlen);
/* Cancel every active run of the job (older definitions' included) and
 * drop a queued one; how many runs were active. */
int sched_cancel(struct sched_job *sj, bool now);
/* For STATUS lines: active jobs, active runs, thread-mode workers. */
void sched_counts(size_t *jobs, size_t *runs, size_t *threads);

/* ------------------------------------------------------------------ */
/* once.c, daemon.c - the two ways of running jobs                      */
/* ------------------------------------------------------------------ */
int once_main(const char *file, char **names, int nnames, bool log_stderr);
int daemon_main(const char *file, bool daemonize, const char *pidfile, bool log_stderr);

/* daemon.c - small accessors for the control socket (ctl.c). */
/* The newest configuration (jobs, control_* keys); NULL before start-up. */
const struct jr_config *daemon_config(void);
/* The runtime of the active job NAME; NULL when it is not active
 * (unknown, disabled, or its plugin did not load). */
struct jobrt *daemon_find_job(const char *name);
/* When job NAME next fires by its schedule (CLOCK_REALTIME seconds); -1
 * when it will not by itself. */
double daemon_next_fire(const char *name);
/* Start a run of job NAME now, telling OBS (may be NULL) about it, as its
 * overlap policy allows: a job whose run is still active is refused with
 * skip and queue, has that run cancelled with replace, runs alongside
 * with allow.  0 and *RUN_ID, or -1 with a reason in ERR. */
int daemon_run_job(const char *name, const struct run_observer *obs, uint64_t *run_id,
		   char *err, size_t errlen);
/* Cancel every active run of job NAME (those of its older definitions,
 * still draining after a reload, included) and drop a queued run: how
 * many runs were active, or -1 (ENOENT) when NAME is not active. */
int daemon_cancel_job(const char *name);
/* Reload the config as SIGHUP does, reading it in the event loop (which
 * waits meanwhile: prefer daemon_reload_async); -1 with every error
 * (FILE:LINE: message) added to ERRS when it is refused. */
int daemon_reload_from_ctl(struct errlist *errs);
/* A request has read the run history: trim the memory it used once the
 * loop comes round, if no run is active. */
void daemon_idle_soon(void);
/* Reload as SIGHUP does, the file read off the event loop; DONE is called
 * once it is over: OK, or not with the errors in ERRS (NULL when jobrund
 * stopped first).  Requests during a load make one more load after it. */
void daemon_reload_async(void (*done)(bool ok, const struct errlist *errs, void *arg),
			 void *arg);

/* ------------------------------------------------------------------ */
/* ctlproto.c - the control protocol's request decoder (pure)          */
/* ------------------------------------------------------------------ */
struct json_t;          /* jansson's json_t */
/* The next request line at the start of BUF (LEN bytes): 1 with LINELEN
 * (without its '\n' and a '\r' before it) and USED (the bytes to drop,
 * the '\n' included); 0 when no line is complete yet; -1 when the line is
 * longer than CTL_MAX_REQUEST, complete or not (where the next request
 * starts cannot be told). */
int ctlproto_next_line(const char *buf, size_t len, size_t *linelen, size_t *used);
/* Whether a request line holds only blanks (it is then ignored). */
bool ctlproto_blank(const char *line, size_t len);
/* Decode one request line: 0 with *REQ (the JSON object; the caller
 * decrefs it) and *CMD (its command name, valid while *REQ lives), or
 * CTLPROTO_MALFORMED (not a JSON object) or CTLPROTO_INVALID (no or the
 * wrong protocol version, no command) with ERR saying why, in the words
 * the reply uses.  Which commands exist is ctl.c's business. */
#define CTLPROTO_MALFORMED (-1)
#define CTLPROTO_INVALID (-2)
int ctlproto_parse(const char *line, size_t len, struct json_t **req,
		   const char **cmd, char *err, size_t errlen);

/* ------------------------------------------------------------------ */
/* ctl.c - the control socket, jobrunctl's other end                    */
/* ------------------------------------------------------------------ */
/* The control protocol (line-delimited JSON, described in ctl.c): bump
 * the version when the messages change. */
#define CTL_PROTO_VERSION 1
#define CTL_MAX_REQUEST (64 * 1024)     /* bytes in one request line */

/* Create the socket at CFG's control_socket, with its directory, group
 * and mode.  A live socket (another jobrund) is an error; a stale one is
 * replaced.  Reports its errors itself (log and stderr).  Before any
 * thread starts. */
int ctl_init(const struct jr_config *cfg);
/* Serve it in the loop: after loop_init, before the first job starts. */
void ctl_start(void);
/* Close every connection and remove the socket. */
void ctl_shutdown(void);

/* ------------------------------------------------------------------ */
/* notify.c - sd_notify: READY, RELOADING, STOPPING, STATUS, WATCHDOG  */
/* ------------------------------------------------------------------ */
/* What STATUS= counts; filled in by the daemon's counter function. */
struct notify_counts {
	size_t jobs, runs, processes, threads;
};
/* Read NOTIFY_SOCKET (nothing is ever sent without it) and start keeping
 * the last error logged.  Early in start-up, before any thread exists.
 * COUNTER fills in the STATUS= counts, in the main thread. */
void notify_init(void (*counter)(struct notify_counts *));
/* READY=1 with STATUS=: start-up complete, or a reload (applied or
 * refused) over.  The first call also starts the watchdog pings
 * (WATCHDOG_USEC) and STATUS= updates: call it from the main thread once
 * the event loop exists. */
void notify_ready(void);
/* RELOADING=1 and MONOTONIC_USEC=: a reload begins. */
void notify_reloading(void);
/* STOPPING=1: shutdown begins. */
void notify_stopping(void);
/* Stop the timers; before loop_shutdown. */
void notify_fini(void);

/* ------------------------------------------------------------------ */
/* bench.c - jobrund --bench: a job sequentially, in threads, in processes */
/* ------------------------------------------------------------------ */
/* Bench job JOB of FILE.  WORKERS and REPEAT are the command line's
 * strings (NULL: the job's workers, once); WARM adds the thread and
 * process runs on warm pools; JSON prints one JSON document instead of
 * the table.  Returns the exit status: 0, 1 config error, 2 usage error,
 * 3 a task failed or a signal interrupted the bench. */
int bench_main(const char *file, const char *job, const char *workers,
	       const char *repeat, bool warm, bool json, bool log_stderr);

#endif /* JOBRUND_H */
