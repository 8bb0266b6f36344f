/*
 * jobrund/plugin.h - the jobrund plugin ABI.
 *
 * This is the only public header of jobrund.  A workload plugin is a shared
 * object that exports exactly one symbol, the descriptor `jr_plugin`, of
 * type `struct jr_plugin`.  jobrund reads the descriptor's ABI numbers and
 * size before it calls any plugin code, and refuses a plugin built for
 * another major version or with a descriptor smaller than the one the ABI
 * minor version it claims defines.
 *
 * The host's services reach the plugin through a table of function
 * pointers (`struct jr_host`), passed to every callback: a plugin never
 * links against the daemon, so the same .so runs inside jobrund (thread
 * mode) and inside jobrund-worker (process mode).
 *
 * Lifecycle, per job:
 *
 *   init(host, job, &state)   once per job and per process that runs it:
 *                             validate the job's settings, build state.
 *                             Also called by `jobrund -t` to validate.
 *   run(host, state, task)    once per task, possibly from several threads
 *                             at once when the plugin is JR_PLUGIN_THREAD_SAFE
 *                             and the job runs in thread mode.
 *   fini(host, state)         once, after the last run.
 *
 * Errors: callbacks return 0 on success or a positive errno value.  A
 * human-readable reason is given with host->setting_error (init) or
 * host->task_error (run); without one jobrund uses strerror(ret).
 *
 * Compatibility rules (for whoever changes this file):
 *  - structures only grow at the end, and carry their size first;
 *  - adding a member or a host service bumps JR_ABI_MINOR;
 *  - changing or removing anything bumps JR_ABI_MAJOR.
 */
#ifndef JOBRUND_PLUGIN_H
#define JOBRUND_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define JR_ABI_MAJOR 1
#define JR_ABI_MINOR 0

/* The name of the one symbol a plugin exports. */
#define JR_PLUGIN_SYMBOL "jr_plugin"

/* Plugin flags (struct jr_plugin.flags). */
/* run() may be called from several threads at once with the same state. */
#define JR_PLUGIN_THREAD_SAFE 0x1u

/* Log priorities, the same numbers as syslog(3)'s. */
#define JR_LOG_ERR     3
#define JR_LOG_WARNING 4
#define JR_LOG_NOTICE  5
#define JR_LOG_INFO    6
#define JR_LOG_DEBUG   7

/* Opaque handles: owned by the host, valid only during the callback that
 * received them (a jr_job during init; a jr_task during run). */
typedef struct jr_job jr_job;
typedef struct jr_task jr_task;

#if defined(__GNUC__)
#define JR_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define JR_PRINTF(f, a)
#endif

/*
 * The host's services.  Every pointer is always set.  Strings returned by
 * the host are owned by the host and stay valid until the callback that
 * received the handle returns (settings: until init returns; copy what you
 * keep).
 */
struct jr_host {
	uint32_t size;                  /* sizeof(struct jr_host) in the host */
	uint32_t abi_major, abi_minor;  /* the host's JR_ABI_* */

	/* --- services for init: the job and its `settings` group --------- */

	/* The job's name (for messages). */
	const char *(*job_name)(const jr_job *job);

	/* Look up settings.NAME.  Each returns 0 and stores the value; ENOENT
	 * when the setting is absent (leave your default); EINVAL when it has
	 * another type (the host has then already reported the error with the
	 * setting's file and line, so just return EINVAL from init).
	 * Integers are range-checked to 64 bits; setting_int accepts only
	 * integers, setting_float integers and floats. */
	int (*setting_string)(jr_job *job, const char *name, const char **value);
	int (*setting_int)(jr_job *job, const char *name, int64_t *value);
	int (*setting_float)(jr_job *job, const char *name, double *value);
	int (*setting_bool)(jr_job *job, const char *name, int *value);

	/* A list or array of strings: *count elements in *values, a
	 * NULL-terminated array owned by the host. */
	int (*setting_strings)(jr_job *job, const char *name,
			       const char *const **values, size_t *count);

	/* Report an invalid setting.  The host prefixes the message with the
	 * config file and line of settings.NAME (or of the job when NAME is
	 * NULL or absent) and with the job's name.  Call it for every problem
	 * found, then return EINVAL from init. */
	void (*setting_error)(jr_job *job, const char *name, const char *fmt, ...)
		JR_PRINTF(3, 4);

	/* Every key present in `settings`, NULL-terminated, owned by the host:
	 * lets a plugin reject keys it does not know. */
	const char *const *(*setting_keys)(jr_job *job);

	/* --- services for run: one task ---------------------------------- */

	/* The task's input as written in the config (its string form), or
	 * NULL when the job has no `inputs`. */
	const char *(*task_input)(const jr_task *task);

	/* Nonzero once the task should stop: cancelled by an administrator,
	 * by shutdown, or past its deadline.  Cheap enough to call often
	 * (every few milliseconds of work); a long task must call it. */
	int (*task_cancelled)(jr_task *task);

	/* Seconds left before the task's timeout, or a negative number when
	 * the job has no timeout. */
	double (*task_remaining)(jr_task *task);

	/* Append LEN bytes to the task's output (the `output` of its result).
	 * The host copies them.  Returns 0, or EFBIG when the output is over
	 * the host's limit (the excess is dropped). */
	int (*task_output)(jr_task *task, const void *data, size_t len);
	int (*task_printf)(jr_task *task, const char *fmt, ...) JR_PRINTF(2, 3);

	/* Set the task's `error` message; use before returning nonzero. */
	void (*task_error)(jr_task *task, const char *fmt, ...) JR_PRINTF(2, 3);

	/* --- services for any callback ----------------------------------- */

	/* Log through jobrund's log (syslog), prefixed with the job's name.
	 * JOB may be NULL outside init; from run use task_log. */
	void (*log)(jr_job *job, int priority, const char *fmt, ...)
		JR_PRINTF(3, 4);
	void (*task_log)(jr_task *task, int priority, const char *fmt, ...)
		JR_PRINTF(3, 4);
};

/*
 * The descriptor.  Define it with JR_PLUGIN_DEFINE (which fills in the ABI
 * numbers and size) and export nothing else.
 */
struct jr_plugin {
	uint32_t abi_major;     /* JR_ABI_MAJOR the plugin was built with */
	uint32_t abi_minor;     /* JR_ABI_MINOR the plugin was built with */
	uint32_t size;          /* sizeof(struct jr_plugin) in the plugin */
	uint32_t flags;         /* JR_PLUGIN_* */
	const char *name;       /* must equal the file name without ".so" */
	const char *version;    /* the plugin's own version, free form */
	const char *description;/* one line, for humans */

	/* Validate the job's settings (through host->setting_*), and build
	 * per-job state in *state (may be left NULL).  Must not start threads
	 * or processes that outlive fini.  Optional (NULL: no settings). */
	int (*init)(const struct jr_host *host, jr_job *job, void **state);

	/* Run one task.  Read the input with host->task_input, write the
	 * result with host->task_output, poll host->task_cancelled.  Return 0
	 * for success or a positive errno value (and host->task_error) for
	 * failure.  Required. */
	int (*run)(const struct jr_host *host, void *state, jr_task *task);

	/* Free what init built.  Optional. */
	void (*fini)(const struct jr_host *host, void *state);
};

#if defined(__GNUC__)
#define JR_EXPORT __attribute__((visibility("default")))
#else
#define JR_EXPORT
#endif

/* Define the descriptor:
 *   JR_PLUGIN_DEFINE(.name = "square", .version = "1.0",
 *                    .flags = JR_PLUGIN_THREAD_SAFE, .run = square_run);
 */
#define JR_PLUGIN_DEFINE(...)                                           \
	JR_EXPORT const struct jr_plugin jr_plugin = {                  \
		.abi_major = JR_ABI_MAJOR,                              \
		.abi_minor = JR_ABI_MINOR,                              \
		.size = sizeof(struct jr_plugin),                       \
		__VA_ARGS__                                             \
	}

#ifdef __cplusplus
}
#endif

#endif /* JOBRUND_PLUGIN_H */
