/*
 * python.c - the `python` plugin: call a Python function per task in an
 * embedded CPython.  The textbook case of the GIL.
 *
 *   settings = { module = "mymod"; function = "work"; path = "/opt/jobs"; };
 *
 * Each task calls module.function(input), the input as a str (the job's
 * `inputs` element as written; without inputs, function() is called with
 * no argument), and its output is str() of the return value.  An exception
 * fails the task with "Type: message (at FILE:LINE in FUNCTION)".  The
 * module is imported in init, so no such module, an import that raises, no
 * such function or a function that is not callable are FILE:LINE errors at
 * `jobrund -t` time (importing runs the module's top-level code then).
 * settings.path, a directory or a list of them, goes in front of sys.path;
 * a relative one is resolved against jobrund's working directory (which is
 * / under -d or systemd: use absolute paths in a daemon's config).
 *
 * One interpreter per process, started once and never finalised.  init and
 * fini run several times in one process (`-t` checking several jobs, the
 * daemon validating a config before it builds the pools, every SIGHUP), and
 * Py_FinalizeEx followed by a new Py_Initialize is unreliable: extension
 * modules (lib-dynload) are never unloaded and many keep static state that
 * does not survive it, and threads still inside Python would crash.  So the
 * first init starts CPython under pthread_once and nothing ever stops it;
 * the memory (a few MiB) goes back when the process exits.  The object is
 * linked with -z nodelete so it stays mapped with the interpreter, and
 * libpython is promoted to RTLD_GLOBAL, because Debian's extension modules
 * are not linked against it and need its symbols to be global.  Modules are
 * imported once per process: an edited module is picked up by new worker
 * processes (process mode), but thread mode needs a restart of jobrund.
 * `jobrund -d` forks after validating the config, so the interpreter may
 * have been started before the fork: that is safe because no thread is
 * inside Python then (the GIL is released and the watcher only starts with
 * the first task).
 *
 * The interpreter is configured, not inherited: an isolated configuration
 * (no PYTHON* variables, no user site directory, no current directory in
 * sys.path), UTF-8 mode, no signal handlers (the daemon owns its signals),
 * and its home set to the prefix of the libpython we were built against,
 * so that the standard library found is the one that matches the library
 * (a pyenv or venv python3 first in PATH must not lend us its own).
 * sys.stdout is pointed at sys.stderr: in thread mode stdout carries
 * `--once`'s JSON results, which print() must not corrupt; stderr goes to
 * the journal under systemd, and process workers' stderr is logged.
 *
 * Threads and the GIL.  After starting, the GIL is released; every entry
 * (init, run, fini) takes it with PyGILState_Ensure and gives it back, so
 * any thread may call in: the daemon's main thread (init, fini), the pool's
 * threads (run), a worker's only thread.  A pool thread's Python thread
 * state lives for one task (PyGILState_Release deletes it), so
 * threading.local() does not carry over between tasks; keeping one per
 * thread would need a thread-exit hook that can still reach CPython's own
 * thread-specific data, which glibc may already have cleared by then.
 * In thread mode all the pool's threads share the one interpreter, so
 * pure-Python CPU work runs one thread at a time: correct, but no faster
 * than sequential.  In process mode each worker process has its own
 * interpreter and GIL, so CPU work scales with the workers.  I/O that
 * releases the GIL (time.sleep, sockets) overlaps in both modes.
 *
 * Cancellation.  A Python call cannot be stopped from C, but it can be
 * asked to raise: while tasks run, one watcher thread per process polls
 * host->task_cancelled every 20 ms and, for a task that should stop, takes
 * the GIL and calls PyThreadState_SetAsyncExc to raise jobrund.Cancelled
 * (a BaseException, so `except Exception` does not swallow it) in the
 * task's thread.  That interrupts Python bytecode within a few ms, in both
 * modes.  It does not interrupt a call blocked in C (time.sleep(60), a
 * socket read, a long C function): the exception is raised when that call
 * returns.  In process mode jobrund then kills the worker (a timeout
 * straight away; a cancel after kill_grace), which always works; in thread
 * mode the thread stays busy until the call returns, and the task is still
 * recorded as timed out or cancelled.  A task whose function returns after
 * it was cancelled, or that swallows Cancelled, is reported as cancelled
 * too.  The watcher starts with the first task and is joined when the last
 * job state is freed, so no thread outlives fini.  Pending calls
 * (Py_AddPendingCall) are no use here: CPython runs them only in the main
 * thread, which in thread mode runs no task.
 *
 * Locks: the GIL, then watch_lock, never the other way round (a thread in
 * Python takes watch_lock; the watcher never waits for the GIL while it
 * holds watch_lock).
 */
#include "config.h"

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/stat.h>

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jobrund/plugin.h"

#define PY_WATCH_MS     20      /* how often running tasks are checked */
#define PY_ERROR_MAX    2048    /* longest exception text kept */

struct py_state {
	PyObject *func;                 /* strong; dropped under the GIL */
	char *module;                   /* settings.module, for messages */
	char *function;                 /* settings.function */
};

/* A call in progress, on its thread's stack, known to the watcher. */
struct py_call {
	const struct jr_host *host;
	jr_task *task;
	unsigned long tid;              /* PyThread_get_thread_ident() */
	int requested;                  /* the task should stop */
	int fired;                      /* Cancelled was raised in it */
	struct py_call *next;
};

/* The interpreter: started once per process. */
static pthread_once_t py_once = PTHREAD_ONCE_INIT;
static char py_start_error[512];        /* empty once started */
static PyObject *py_cancelled;          /* jobrund.Cancelled, forever */

/* The watcher and what it watches. */
static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond = PTHREAD_COND_INITIALIZER;
static struct py_call *watch_calls;     /* calls in progress */
static pthread_t watch_thread;
static int watch_running;               /* watch_thread exists */
static int watch_stop;                  /* asked to exit */
static int py_nstates;                  /* live job states */

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* snprintf that may truncate, on purpose: messages are cut to fit. */
static void JR_PRINTF(3, 4)
py_fmt(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

/* --- the interpreter ---------------------------------------------------- */

static void
py_start_failed(const char *what, PyStatus st)
{
	snprintf(py_start_error, sizeof py_start_error, "%s: %s%s%s", what,
	    st.func ? st.func : "", st.func ? ": " : "",
	    st.err_msg ? st.err_msg : "failed");
}

static void
py_start(void)
{
	PyPreConfig pre;
	PyConfig cfg;
	PyStatus st;
	PyObject *err;
	const char *dbc;
	Dl_info dli;

	/* Extension modules resolve Py* symbols globally: make libpython's
	 * global (and never unloaded), as if jobrund were linked with it. */
	if (dladdr((void *)Py_InitializeFromConfig, &dli) != 0 &&
	    dli.dli_fname != NULL &&
	    dlopen(dli.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL |
	    RTLD_NODELETE) == NULL) {
		snprintf(py_start_error, sizeof py_start_error, "cannot make "
		    "%s global: %s", dli.dli_fname, dlerror());
		return;
	}
	if (Py_IsInitialized()) {
		snprintf(py_start_error, sizeof py_start_error, "this process "
		    "already runs another embedded Python");
		return;
	}

	PyPreConfig_InitIsolatedConfig(&pre);
	pre.utf8_mode = 1;
	st = Py_PreInitialize(&pre);
	if (PyStatus_Exception(st)) {
		py_start_failed("Py_PreInitialize", st);
		return;
	}

	PyConfig_InitIsolatedConfig(&cfg);
	cfg.install_signal_handlers = 0;
	cfg.parse_argv = 0;
	/* Isolated ignores the environment; this one is worth honouring. */
	dbc = getenv("PYTHONDONTWRITEBYTECODE");
	if (dbc != NULL && dbc[0] != '\0')
		cfg.write_bytecode = 0;
	st = PyConfig_SetBytesString(&cfg, &cfg.home, JR_PYTHON_HOME);
	if (!PyStatus_Exception(st))
		st = PyConfig_SetBytesString(&cfg, &cfg.program_name,
		    JR_PYTHON_EXECUTABLE);
	if (!PyStatus_Exception(st))
		st = Py_InitializeFromConfig(&cfg);
	PyConfig_Clear(&cfg);
	if (PyStatus_Exception(st)) {
		py_start_failed("Py_InitializeFromConfig", st);
		return;
	}

	/* This thread holds the GIL now. */
	py_cancelled = PyErr_NewExceptionWithDoc("jobrund.Cancelled",
	    "Raised in a task's Python code when jobrund cancels the task "
	    "(by an administrator, at shutdown or at its timeout).",
	    PyExc_BaseException, NULL);
	err = PySys_GetObject("stderr");        /* borrowed */
	if (py_cancelled == NULL || err == NULL ||
	    PySys_SetObject("stdout", err) == -1) {
		snprintf(py_start_error, sizeof py_start_error, "cannot set "
		    "up the interpreter");
		PyErr_Clear();
	}
	/* Let any thread take the GIL.  The thread state is kept: this
	 * thread's later PyGILState_Ensure uses it again. */
	PyEval_SaveThread();
}

/* Flush sys.stdout and sys.stderr (both stderr, see the top); GIL held. */
static void
py_flush(void)
{
	PyObject *f = PySys_GetObject("stderr"), *r;

	if (f != NULL && f != Py_None) {
		r = PyObject_CallMethod(f, "flush", NULL);
		Py_XDECREF(r);
	}
	PyErr_Clear();
}

/* UTF-8 bytes of str(OBJ), never failing for a str; NULL on error. */
static PyObject *
py_str_bytes(PyObject *obj)
{
	PyObject *s, *b;

	if ((s = PyObject_Str(obj)) == NULL)
		return NULL;
	b = PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace");
	Py_DECREF(s);
	return b;
}

/* Copy str(OBJ) into BUF; "?" when it cannot be had. */
static void
py_str_copy(PyObject *obj, char *buf, size_t len)
{
	PyObject *b = obj ? py_str_bytes(obj) : NULL;

	if (b == NULL) {
		PyErr_Clear();
		py_fmt(buf, len, "?");
		return;
	}
	py_fmt(buf, len, "%s", PyBytes_AS_STRING(b));
	Py_DECREF(b);
}

/* The exception's type, as Python's traceback names it: "ValueError",
 * "mymod.MyError". */
static void
py_type_name(PyObject *type, char *buf, size_t len)
{
	PyObject *mod, *qual;
	char m[256], q[256];

	mod = PyObject_GetAttrString(type, "__module__");
	qual = PyObject_GetAttrString(type, "__qualname__");
	py_str_copy(qual, q, sizeof q);
	py_str_copy(mod, m, sizeof m);
	if (mod == NULL || strcmp(m, "builtins") == 0 || strcmp(m, "?") == 0)
		py_fmt(buf, len, "%s", q);
	else
		py_fmt(buf, len, "%s.%s", m, q);
	Py_XDECREF(mod);
	Py_XDECREF(qual);
	PyErr_Clear();
}

/* Where TB's innermost frame is: " (at FILE:LINE in NAME)", or "" for
 * frozen or synthetic code ("<frozen importlib._bootstrap>"). */
static void
py_where(PyObject *tb, char *buf, size_t len)
{
	PyObject *next, *frame = NULL, *code = NULL, *line = NULL;
	PyObject *file = NULL, *name = NULL;
	char f[PATH_MAX], n[128];

	buf[0] = '\0';
	if (tb == NULL || tb == Py_None)
		return;
	Py_INCREF(tb);
	while ((next = PyObject_GetAttrString(tb, "tb_next")) != NULL &&
	    next != Py_None) {
		Py_DECREF(tb);
		tb = next;
	}
	Py_XDECREF(next);
	if ((frame = PyObject_GetAttrString(tb, "tb_frame")) != NULL &&
	    (code = PyObject_GetAttrString(frame, "f_code")) != NULL &&
	    (line = PyObject_GetAttrString(tb, "tb_lineno")) != NULL &&
	    (file = PyObject_GetAttrString(code, "co_filename")) != NULL &&
	    (name = PyObject_GetAttrString(code, "co_name")) != NULL) {
		py_str_copy(file, f, sizeof f);
		py_str_copy(name, n, sizeof n);
		if (f[0] != '<')
			py_fmt(buf, len, " (at %s:%ld in %s)", f,
			    PyLong_AsLong(line), n);
	}
	Py_XDECREF(name);
	Py_XDECREF(file);
	Py_XDECREF(line);
	Py_XDECREF(code);
	Py_XDECREF(frame);
	Py_DECREF(tb);
	PyErr_Clear();
}

/* Describe the current exception as "Type: message (at FILE:LINE in F)"
 * and clear it; *IS_CANCEL tells whether it is jobrund.Cancelled. */
static void
py_describe(char *buf, size_t len, int *is_cancel)
{
	PyObject *type = NULL, *value = NULL, *tb = NULL;
	char tname[256], msg[PY_ERROR_MAX], where[PATH_MAX + 160];

	PyErr_Fetch(&type, &value, &tb);
	if (type == NULL) {
		py_fmt(buf, len, "failed without an exception");
		if (is_cancel)
			*is_cancel = 0;
		return;
	}
	PyErr_NormalizeException(&type, &value, &tb);
	if (is_cancel)
		*is_cancel = py_cancelled != NULL &&
		    PyErr_GivenExceptionMatches(type, py_cancelled);
	py_type_name(type, tname, sizeof tname);
	py_str_copy(value, msg, sizeof msg);
	py_where(tb, where, sizeof where);
	if (msg[0] != '\0')
		py_fmt(buf, len, "%s: %s%s", tname, msg, where);
	else
		py_fmt(buf, len, "%s%s", tname, where);
	Py_XDECREF(type);
	Py_XDECREF(value);
	Py_XDECREF(tb);
	PyErr_Clear();
}

/* --- the watcher -------------------------------------------------------- */

static void *
watch_main(void *arg)
{
	struct py_call *c;
	struct timespec ts;
	PyGILState_STATE gil;
	int want;

	pthread_mutex_lock(&watch_lock);
	while (!watch_stop) {
		want = 0;
		for (c = watch_calls; c != NULL; c = c->next) {
			if (!c->requested && c->host->task_cancelled(c->task))
				c->requested = 1;
			if (c->requested && !c->fired)
				want = 1;
		}
		if (want) {
			/* GIL first, then the lock (see the top); the calls
			 * still listed then are still inside Python. */
			pthread_mutex_unlock(&watch_lock);
			gil = PyGILState_Ensure();
			pthread_mutex_lock(&watch_lock);
			for (c = watch_calls; c != NULL; c = c->next) {
				if (c->requested && !c->fired) {
					PyThreadState_SetAsyncExc(c->tid,
					    py_cancelled);
					c->fired = 1;
				}
			}
			pthread_mutex_unlock(&watch_lock);
			PyGILState_Release(gil);
			pthread_mutex_lock(&watch_lock);
			continue;
		}
		if (watch_calls == NULL) {
			pthread_cond_wait(&watch_cond, &watch_lock);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += PY_WATCH_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&watch_cond, &watch_lock, &ts);
	}
	pthread_mutex_unlock(&watch_lock);
	return NULL;
}

/* Watch CALL until watch_remove; starts the watcher on first use.  Returns
 * 0, or an errno value when the watcher cannot start (then the call runs
 * unwatched: cancellation is only checked after it). */
static int
watch_add(struct py_call *c)
{
	sigset_t all, old;
	int r = 0;

	pthread_mutex_lock(&watch_lock);
	if (!watch_running) {
		/* The watcher takes no signal: block them all in it. */
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		r = pthread_create(&watch_thread, NULL, watch_main, NULL);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (r == 0)
			watch_running = 1;
	}
	c->next = watch_calls;
	watch_calls = c;
	pthread_cond_signal(&watch_cond);
	pthread_mutex_unlock(&watch_lock);
	return r;
}

/* Stop watching CALL; returns whether Cancelled was raised in it. */
static int
watch_remove(struct py_call *c)
{
	struct py_call **pp;
	int fired;

	pthread_mutex_lock(&watch_lock);
	for (pp = &watch_calls; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	fired = c->fired;
	pthread_mutex_unlock(&watch_lock);
	return fired;
}

/* One more job state; the last one's fini stops the watcher. */
static void
watch_hold(void)
{
	pthread_mutex_lock(&watch_lock);
	py_nstates++;
	pthread_mutex_unlock(&watch_lock);
}

static void
watch_release(void)
{
	int join = 0;

	pthread_mutex_lock(&watch_lock);
	if (--py_nstates == 0 && watch_running) {
		watch_stop = 1;
		pthread_cond_signal(&watch_cond);
		join = 1;
	}
	pthread_mutex_unlock(&watch_lock);
	if (!join)
		return;
	/* No task runs (no state is left), so the watcher is not waiting
	 * for the GIL; the caller does not hold it either. */
	pthread_join(watch_thread, NULL);
	pthread_mutex_lock(&watch_lock);
	watch_running = 0;
	watch_stop = 0;
	pthread_mutex_unlock(&watch_lock);
}

/* --- settings ----------------------------------------------------------- */

/* NAME is dotted identifiers ("a.b.c"); non-ASCII is left to Python. */
static int
dotted_ok(const char *name)
{
	const unsigned char *p = (const unsigned char *)name;
	int start = 1;

	if (*p == '\0')
		return 0;
	for (; *p != '\0'; p++) {
		if (*p == '.') {
			if (start)
				return 0;
			start = 1;
			continue;
		}
		if (!(*p == '_' || (*p >= 'a' && *p <= 'z') ||
		    (*p >= 'A' && *p <= 'Z') || *p >= 0x80 ||
		    (!start && *p >= '0' && *p <= '9')))
			return 0;
		start = 0;
	}
	return !start;
}

/* Read a required dotted name; 1 when bad (reported). */
static int
get_name(const struct jr_host *host, jr_job *job, const char *key,
    const char *example, const char **v)
{
	int r = host->setting_string(job, key, v);

	if (r == ENOENT) {
		host->setting_error(job, key, "python needs settings.%s, "
		    "e.g. %s = \"%s\"", key, key, example);
		return 1;
	}
	if (r != 0)
		return 1;
	if (!dotted_ok(*v)) {
		host->setting_error(job, key, "\"%.100s\" is not a Python "
		    "name (identifiers joined by dots, e.g. \"%s\")", *v,
		    example);
		return 1;
	}
	return 0;
}

/* Put DIRS at the front of sys.path, in order, skipping those already
 * there; GIL held.  0, or -1 with a Python exception set. */
static int
py_add_paths(char **dirs, size_t n)
{
	PyObject *sys_path = PySys_GetObject("path");   /* borrowed */
	PyObject *s;
	size_t at = 0;
	int has;

	if (sys_path == NULL || !PyList_Check(sys_path)) {
		PyErr_SetString(PyExc_RuntimeError, "sys.path is not a list");
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if ((s = PyUnicode_DecodeFSDefault(dirs[i])) == NULL)
			return -1;
		if ((has = PySequence_Contains(sys_path, s)) == 0 &&
		    PyList_Insert(sys_path, (Py_ssize_t)at++, s) == -1)
			has = -1;
		Py_DECREF(s);
		if (has == -1)
			return -1;
	}
	return 0;
}

/* Look up the dotted attribute NAME of MOD; a new reference, or NULL with
 * a Python exception set. */
static PyObject *
py_lookup(PyObject *mod, const char *name)
{
	PyObject *obj = mod, *next;
	char *copy, *part, *save = NULL;

	if ((copy = strdup(name)) == NULL)
		return PyErr_NoMemory();
	Py_INCREF(obj);
	for (part = strtok_r(copy, ".", &save); part != NULL;
	    part = strtok_r(NULL, ".", &save)) {
		next = PyObject_GetAttrString(obj, part);
		Py_DECREF(obj);
		if ((obj = next) == NULL)
			break;
	}
	free(copy);
	return obj;
}

static void
py_free_strings(char **v, size_t n)
{
	for (size_t i = 0; i < n && v != NULL; i++)
		free(v[i]);
	free(v);
}

static int
python_init(const struct jr_host *host, jr_job *job, void **state)
{
	const char *const *keys = host->setting_keys(job);
	const char *const *paths = NULL;
	const char *module = NULL, *function = NULL;
	struct py_state *st = NULL;
	PyGILState_STATE gil;
	PyObject *mod = NULL, *func = NULL;
	struct stat sb;
	char **dirs = NULL, msg[PY_ERROR_MAX + 256], tname[128];
	size_t npaths = 0, ndirs = 0;
	int bad = 0, r, ret = EINVAL;

	for (size_t i = 0; keys != NULL && keys[i] != NULL; i++) {
		if (strcmp(keys[i], "module") != 0 &&
		    strcmp(keys[i], "function") != 0 &&
		    strcmp(keys[i], "path") != 0) {
			host->setting_error(job, keys[i], "unknown setting "
			    "\"%s\": python knows module, function and path",
			    keys[i]);
			bad = 1;
		}
	}
	bad |= get_name(host, job, "module", "mymodule", &module);
	bad |= get_name(host, job, "function", "work", &function);

	r = host->setting_strings(job, "path", &paths, &npaths);
	if (r != 0 && r != ENOENT)
		bad = 1;
	if (r == 0 && (dirs = calloc(npaths + 1, sizeof *dirs)) == NULL)
		return ENOMEM;
	for (size_t i = 0; r == 0 && i < npaths; i++) {
		const char *why = NULL;

		if (paths[i][0] == '\0')
			why = "empty: expected a directory";
		else if (stat(paths[i], &sb) == -1)
			why = strerror(errno);
		else if (!S_ISDIR(sb.st_mode))
			why = "not a directory";
		if (why != NULL) {
			host->setting_error(job, "path", "\"%.200s\": %s",
			    paths[i], why);
			bad = 1;
			continue;
		}
		if ((dirs[ndirs] = realpath(paths[i], NULL)) == NULL) {
			host->setting_error(job, "path", "\"%.200s\": %s",
			    paths[i], strerror(errno));
			bad = 1;
			continue;
		}
		ndirs++;
	}
	if (bad)
		goto out;

	pthread_once(&py_once, py_start);
	if (py_start_error[0] != '\0') {
		host->setting_error(job, "module", "cannot start the embedded "
		    "Python (%s): %s", JR_PYTHON_HOME, py_start_error);
		goto out;
	}

	gil = PyGILState_Ensure();
	if (py_add_paths(dirs, ndirs) == -1) {
		py_describe(msg, sizeof msg, NULL);
		host->setting_error(job, "path", "cannot extend sys.path: %s",
		    msg);
	} else if ((mod = PyImport_ImportModule(module)) == NULL) {
		py_describe(msg, sizeof msg, NULL);
		host->setting_error(job, "module", "cannot import module "
		    "\"%s\": %s", module, msg);
	} else if ((func = py_lookup(mod, function)) == NULL) {
		py_describe(msg, sizeof msg, NULL);
		host->setting_error(job, "function", "no function \"%s\" in "
		    "module \"%s\": %s", function, module, msg);
	} else if (!PyCallable_Check(func)) {
		py_type_name((PyObject *)Py_TYPE(func), tname, sizeof tname);
		host->setting_error(job, "function", "%s.%s is not callable: "
		    "it is a %s", module, function, tname);
	} else if ((st = calloc(1, sizeof *st)) == NULL ||
	    (st->module = strdup(module)) == NULL ||
	    (st->function = strdup(function)) == NULL) {
		ret = ENOMEM;
	} else {
		st->func = func;
		func = NULL;
		ret = 0;
	}
	Py_XDECREF(func);
	Py_XDECREF(mod);
	PyErr_Clear();
	py_flush();
	PyGILState_Release(gil);

	if (ret == 0) {
		watch_hold();
		*state = st;
		st = NULL;
	}
out:
	if (st != NULL) {
		free(st->module);
		free(st->function);
		free(st);
	}
	py_free_strings(dirs, ndirs);
	return ret;
}

static void
python_fini(const struct jr_host *host, void *state)
{
	struct py_state *st = state;
	PyGILState_STATE gil;

	if (st == NULL)
		return;
	watch_release();
	gil = PyGILState_Ensure();
	Py_XDECREF(st->func);
	PyGILState_Release(gil);
	free(st->module);
	free(st->function);
	free(st);
}

/* --- a task ------------------------------------------------------------- */

static int
python_run(const struct jr_host *host, void *state, jr_task *task)
{
	struct py_state *st = state;
	const char *input = host->task_input(task);
	struct py_call call;
	PyGILState_STATE gil;
	PyObject *arg = NULL, *res = NULL, *out = NULL;
	char msg[PY_ERROR_MAX + 256];
	int fired, unwatched, is_cancel = 0, ret;
	double start;

	if (host->task_cancelled(task)) {
		host->task_error(task, "cancelled before %s.%s was called",
		    st->module, st->function);
		return ECANCELED;
	}
	memset(&call, 0, sizeof call);
	call.host = host;
	call.task = task;

	start = now_s();
	gil = PyGILState_Ensure();
	if (input != NULL && (arg = PyUnicode_DecodeUTF8(input,
	    (Py_ssize_t)strlen(input), "surrogateescape")) == NULL) {
		py_describe(msg, sizeof msg, NULL);
		host->task_error(task, "cannot pass the input to Python: %s",
		    msg);
		ret = EINVAL;
		goto out;
	}

	/* While the call is watched, only the watcher uses the host for this
	 * task: nothing here calls host->* between add and remove. */
	call.tid = PyThread_get_thread_ident();
	unwatched = watch_add(&call);
	if (arg != NULL)
		res = PyObject_CallFunctionObjArgs(st->func, arg, NULL);
	else
		res = PyObject_CallObject(st->func, NULL);
	fired = watch_remove(&call);
	if (unwatched != 0)
		host->task_log(task, JR_LOG_WARNING, "python: cannot start the "
		    "watcher thread (%s): this task could not be interrupted",
		    strerror(unwatched));
	if (fired) {
		/* Raised but maybe not delivered yet: it must not surface in
		 * this thread's next call. */
		PyThreadState_SetAsyncExc(call.tid, NULL);
	}

	if (res == NULL) {
		py_describe(msg, sizeof msg, &is_cancel);
		if (is_cancel) {
			host->task_error(task, "%s.%s stopped after %.2fs: "
			    "jobrund.Cancelled was raised in it", st->module,
			    st->function, now_s() - start);
			ret = ECANCELED;
		} else {
			host->task_error(task, "%s", msg);
			ret = EIO;
		}
	} else if (fired || host->task_cancelled(task)) {
		host->task_error(task, "%s.%s returned after %.2fs, after the "
		    "task was cancelled%s: result dropped", st->module,
		    st->function, now_s() - start, fired ?
		    " (jobrund.Cancelled did not stop it)" : "");
		ret = ECANCELED;
	} else if ((out = py_str_bytes(res)) == NULL) {
		py_describe(msg, sizeof msg, NULL);
		host->task_error(task, "str() of the result failed: %s", msg);
		ret = EIO;
	} else {
		host->task_output(task, PyBytes_AS_STRING(out),
		    (size_t)PyBytes_GET_SIZE(out));
		ret = 0;
	}

out:
	Py_XDECREF(out);
	Py_XDECREF(res);
	Py_XDECREF(arg);
	PyErr_Clear();
	py_flush();
	PyGILState_Release(gil);
	return ret;
}

JR_PLUGIN_DEFINE(
	.name = "python",
	.version = "1.0",
	.description = "call settings.module's settings.function(input) in "
	    "an embedded CPython",
	.flags = JR_PLUGIN_THREAD_SAFE,
	.init = python_init,
	.run = python_run,
	.fini = python_fini,
);
