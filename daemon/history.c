/*
 * history.c - the run history: every run of every job, with its tasks'
 * results, in SQLite at STATE_DIR/history.db; and the little scheduling
 * state that must survive a restart (the last cron time each job handled).
 *
 * Schema (PRAGMA user_version = HISTORY_SCHEMA; bump it, and teach
 * history_open to upgrade, whenever a table changes):
 *
 *   runs(job, run, trigger, status, started, ended, ntasks, nok, nfailed)
 *       one row per run, keyed by (job, run); status is running, ok,
 *       failed, cancelled or abandoned; times are Unix seconds (REAL).
 *   tasks(job, run, idx, attempt, input, status, output, error, ...)
 *       one row per task of an ended run: the fields of the result JSON;
 *       deleted with their run (ON DELETE CASCADE).
 *   schedule(job, last_fire)
 *       the last cron time each job handled (fired or skipped), for
 *       `catchup` and so that no scheduled minute fires twice.
 *
 * Transactions.  A run is inserted, status running, when it starts (one
 * autocommit INSERT); when it ends, its status and counts, all its tasks
 * and the pruning of the job's oldest runs (history_keep) are one
 * transaction.  So whatever moment the daemon dies at, the database holds
 * each run either as running (then history_abandon, at the next start,
 * marks it abandoned: it is never rerun) or as ended with all its tasks;
 * never half a run.
 *
 * Crash safety and speed.  The journal is a WAL with synchronous=NORMAL:
 * a commit appends to the WAL without fsync, so a killed daemon loses
 * nothing committed and a power cut loses at most the last transactions,
 * never the database's consistency.  The fsyncs happen at checkpoints,
 * which copy the WAL back into the database: the main connection never
 * checkpoints (wal_autocheckpoint = 0); a checkpointer thread with its own
 * connection does, passively (never blocking the writer), when the WAL
 * has grown past CHECKPOINT_PAGES.  That connection opens its files at
 * start-up, so the daemon's descriptors do not change afterwards.  One
 * more sync would fall on the main thread: the first commit into an
 * empty or wholly checkpointed WAL syncs the WAL's header, and that
 * commit would be a run's (its start, just as it hands out its tasks);
 * so the daemon makes that commit itself, at start-up and, once the
 * checkpointer has emptied the WAL (it says so on an eventfd, usually
 * just after the run whose commit set it going has ended), when the
 * daemon is idle (wal_start, history_idle).  The main thread's
 * writes are thus small appends to the page cache, tens of microseconds
 * each; each write is timed, and one slower than SLOW_WRITE_MS is logged.  Reads (the
 * control socket's `history`) share the main connection and see every
 * write already made.
 *
 * Failures never stop scheduling.  If the database cannot be opened the
 * daemon runs without history (logged); a corrupt file is moved aside and
 * a new one started.  A failing write (a full disk above all) is logged
 * once, not once per write; that writes work again is logged when a whole
 * run is recorded again (small writes may squeeze into a nearly full
 * disk meanwhile); a disk that keeps filling up is logged at most every
 * FAIL_LOG_EVERY seconds.  The runs in between are not recorded, or only
 * their start: a run whose end could not be written stays `running`, and
 * the next start marks it abandoned.
 *
 * Memory.  An idle daemon should hold little (README, Performance), and
 * SQLite's defaults are sized for busier programs: each connection's page
 * cache starts with a bulk allocation of 20 pages (about 85 KiB, all of
 * it touched), and may grow to 2 MiB.  So the bulk allocation is turned
 * off (sqlite_setup: pages are allocated one at a time, as they are
 * needed; a fresh history uses a handful), the statements only queries
 * use are prepared when first used, and the main connection's
 * cache is capped at CACHE_KIB: what our statements touch is a few index
 * and table pages per job, and a page not in the cache is one read from
 * the WAL or the file, in the kernel's page cache, microseconds; when the
 * daemon falls idle it empties that cache (history_idle).  No
 * memory-mapped I/O (SQLite's default here, mmap_size 0, is kept).
 *
 * Everything here runs in the main thread, except the checkpointer, which
 * touches nothing but its own connection, the lock-guarded request and
 * its eventfd.
 */
#include "config.h"

#include <sys/eventfd.h>
#include <sys/stat.h>

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "jobrund.h"

#define HISTORY_SCHEMA          1       /* bump when the tables change */
#define HISTORY_FILE            "history.db"
#define CHECKPOINT_PAGES        1000    /* WAL pages before a checkpoint */
#define BUSY_TIMEOUT_MS         100
#define SLOW_WRITE_MS           50.0
#define FAIL_LOG_EVERY          600.0   /* seconds */
#define CACHE_KIB               512     /* the main connection's page cache */

static const char schema_sql[] =
	"CREATE TABLE runs ("
	"  job      TEXT    NOT NULL,"
	"  run      INTEGER NOT NULL,"
	"  trigger  TEXT    NOT NULL,"
	"  status   TEXT    NOT NULL,"
	"  started  REAL    NOT NULL,"
	"  ended    REAL,"
	"  ntasks   INTEGER NOT NULL,"
	"  nok      INTEGER,"
	"  nfailed  INTEGER,"
	"  PRIMARY KEY (job, run));"
	"CREATE INDEX runs_running ON runs (status) WHERE status = 'running';"
	"CREATE TABLE tasks ("
	"  job      TEXT    NOT NULL,"
	"  run      INTEGER NOT NULL,"
	"  idx      INTEGER NOT NULL,"
	"  attempt  INTEGER NOT NULL,"
	"  input    TEXT,"
	"  status   TEXT    NOT NULL,"
	"  output   BLOB    NOT NULL,"
	"  error    TEXT,"
	"  worker_output BLOB,"
	"  worker_output_dropped INTEGER NOT NULL DEFAULT 0,"
	"  mode     TEXT    NOT NULL,"
	"  pid      INTEGER,"
	"  started  REAL,"
	"  wall_s   REAL,"
	"  cpu_s    REAL,"
	"  signal   INTEGER,"
	"  exit_code INTEGER,"
	"  core_dumped INTEGER,"
	"  PRIMARY KEY (job, run, idx),"
	"  FOREIGN KEY (job, run) REFERENCES runs (job, run) ON DELETE CASCADE);"
	"CREATE TABLE schedule ("
	"  job       TEXT PRIMARY KEY,"
	"  last_fire INTEGER NOT NULL);";

/* The prepared statements, by use.  Those from ST_FIRST_LAZY on serve
 * only `jobrunctl history` and `show`: prepared at their first use, not at
 * start-up (about 28 KiB less held by a daemon nobody asks). */
enum {
	ST_BEGIN, ST_COMMIT, ST_ROLLBACK,
	ST_RUN_INSERT, ST_RUN_END, ST_TASK_INSERT, ST_PRUNE,
	ST_LAST_ID, ST_LAST_FIRE, ST_SET_FIRE,
	ST_LIST, ST_LIST_ALL, ST_TASKS, ST_RUN_EXISTS,
	ST_COUNT,
	ST_FIRST_LAZY = ST_LIST
};

static const char *const statement_sql[ST_COUNT] = {
	/* Savepoints: they nest, inside a batch (history_batch_begin). */
	[ST_BEGIN] = "SAVEPOINT jr",
	[ST_COMMIT] = "RELEASE jr",
	[ST_ROLLBACK] = "ROLLBACK TO jr",
	[ST_RUN_INSERT] = "INSERT INTO runs (job, run, trigger, status, started, ntasks) "
	    "VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
	[ST_RUN_END] = "INSERT INTO runs (job, run, trigger, status, started, ended, "
	    "ntasks, nok, nfailed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
	    "ON CONFLICT (job, run) DO UPDATE SET status = excluded.status, "
	    "ended = excluded.ended, nok = excluded.nok, nfailed = excluded.nfailed",
	[ST_TASK_INSERT] = "INSERT OR REPLACE INTO tasks (job, run, idx, attempt, input, "
	    "status, output, error, worker_output, worker_output_dropped, mode, pid, "
	    "started, wall_s, cpu_s, signal, exit_code, core_dumped) VALUES "
	    "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, "
	    "?17, ?18)",
	/* Every ended run older than the KEEP newest. */
	[ST_PRUNE] = "DELETE FROM runs WHERE job = ?1 AND status <> 'running' AND "
	    "run < (SELECT min(run) FROM (SELECT run FROM runs WHERE job = ?1 "
	    "ORDER BY run DESC LIMIT ?2))",
	[ST_LAST_ID] = "SELECT max(run) FROM runs WHERE job = ?1",
	[ST_LAST_FIRE] = "SELECT last_fire FROM schedule WHERE job = ?1",
	[ST_SET_FIRE] = "INSERT INTO schedule (job, last_fire) VALUES (?1, ?2) "
	    "ON CONFLICT (job) DO UPDATE SET last_fire = excluded.last_fire",
	[ST_LIST] = "SELECT job, run, trigger, status, started, ended, ntasks, "
	    "nok, nfailed FROM runs WHERE job = ?1 ORDER BY run DESC LIMIT ?2",
	[ST_LIST_ALL] = "SELECT job, run, trigger, status, started, ended, ntasks, "
	    "nok, nfailed FROM runs ORDER BY started DESC LIMIT ?2",
	[ST_TASKS] = "SELECT idx, attempt, input, status, output, error, worker_output, "
	    "worker_output_dropped, mode, pid, started, wall_s, cpu_s, signal, "
	    "exit_code, core_dumped FROM tasks WHERE job = ?1 AND run = ?2 ORDER BY idx",
	[ST_RUN_EXISTS] = "SELECT 1 FROM runs WHERE job = ?1 AND run = ?2",
};

static const char *const run_status_names[] = {
	[RUN_RUNNING] = "running", [RUN_OK] = "ok", [RUN_FAILED] = "failed",
	[RUN_CANCELLED] = "cancelled", [RUN_ABANDONED] = "abandoned",
};

/* The checkpointer thread and what it is asked to do. */
struct checkpointer {
	pthread_t thread;
	bool started;
	sqlite3 *db;                    /* its own connection: the thread's */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool wanted, quit;              /* guarded by lock */
	int wake_fd;                    /* eventfd: a checkpoint is done */
	bool restart_due;               /* main thread: one was (wal_start) */
};

static struct {
	sqlite3 *db;
	char *path;
	sqlite3_stmt *st[ST_COUNT];
	bool failing;                   /* a write failed; logged once */
	bool fail_logged, ever_logged;
	double last_fail_log;           /* mono_now() */
	uint64_t nfailed;               /* writes failed while failing */
	int depth;                      /* savepoints open */
	struct checkpointer ckpt;
	/* Write latency, for the log and the tests. */
	uint64_t nwrites;
	double total_ms, max_ms;
} h = {
	.ckpt = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER },
};

const char *
run_status_name(enum run_status st)
{
	if ((size_t)st >= sizeof run_status_names / sizeof run_status_names[0])
		return "unknown";
	return run_status_names[st];
}

int
run_status_from_name(const char *name)
{
	for (size_t i = 0; i < sizeof run_status_names / sizeof run_status_names[0]; i++)
		if (strcmp(name, run_status_names[i]) == 0)
			return (int)i;
	return -1;
}

bool
history_available(void)
{
	return h.db != NULL;
}

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/*
 * A write failed with RC: say so once, until a whole run is recorded
 * again; and a disk that keeps filling up and freeing space is logged at
 * most every FAIL_LOG_EVERY seconds.
 */
static void
write_failed(const char *what, int rc)
{
	double now = mono_now();

	h.nfailed++;
	if (h.failing)
		return;
	h.failing = true;
	h.fail_logged = !h.ever_logged || now - h.last_fail_log >= FAIL_LOG_EVERY;
	if (!h.fail_logged)
		return;
	h.ever_logged = true;
	h.last_fail_log = now;
	if (rc == SQLITE_FULL)
		log_msg(LOG_ERR, "history: %s: the disk is full: runs are not recorded "
			"until there is room again (scheduling goes on)", what);
	else
		log_msg(LOG_ERR, "history: %s: %s: runs are not recorded until writes "
			"work again (scheduling goes on)", what, sqlite3_errstr(rc));
}

/* A write worked; WHOLE_RUN: a run's record (its end, with its tasks),
 * which is what it takes to say writes work again. */
static void
write_worked(bool whole_run)
{
	if (!h.failing || !whole_run)
		return;
	h.failing = false;
	if (h.fail_logged)
		log_msg(LOG_NOTICE, "history: writes work again: runs are recorded (%"
			PRIu64 " write%s failed meanwhile)", h.nfailed,
			h.nfailed == 1 ? "" : "s");
	h.nfailed = 0;
}

static double
now_ms(void)
{
	return mono_now() * 1000.0;
}

static void
write_timed(double t0, const char *what)
{
	double ms = now_ms() - t0;

	h.nwrites++;
	h.total_ms += ms;
	if (ms > h.max_ms)
		h.max_ms = ms;
	if (ms > SLOW_WRITE_MS)
		log_msg(LOG_WARNING, "history: %s took %.0f ms (the event loop waited)",
			what, ms);
}

static int
prepare(int which)
{
	return sqlite3_prepare_v3(h.db, statement_sql[which], -1,
				  SQLITE_PREPARE_PERSISTENT, &h.st[which], NULL);
}

/* Reset and clear a statement for its next use. */
static sqlite3_stmt *
stmt(int which)
{
	sqlite3_stmt *s = h.st[which];

	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return s;
}

/* The same for a statement prepared at its first use (ST_FIRST_LAZY on):
 * NULL, logged, with errno set, if it cannot be prepared. */
static sqlite3_stmt *
lazy_stmt(int which)
{
	int rc;

	if (h.st[which] == NULL && (rc = prepare(which)) != SQLITE_OK) {
		log_msg(LOG_WARNING, "history: cannot prepare a query: %s",
			sqlite3_errmsg(h.db));
		h.st[which] = NULL;
		errno = EIO;
		return NULL;
	}
	return stmt(which);
}

/* Run a statement that returns no rows; its sqlite3 result code. */
static int
step_done(sqlite3_stmt *s)
{
	int rc = sqlite3_step(s);

	sqlite3_reset(s);
	return rc == SQLITE_ROW ? SQLITE_DONE : rc;
}

static int
tx_begin(void)
{
	int rc = step_done(stmt(ST_BEGIN));

	if (rc == SQLITE_DONE)
		h.depth++;
	return rc;
}

static int
tx_commit(void)
{
	int rc = step_done(stmt(ST_COMMIT));

	if (rc == SQLITE_DONE)
		h.depth--;
	return rc;
}

/* Undo what was done since the matching tx_begin, and end it.  At the
 * outermost level, make sure no transaction is left open whatever state
 * a failed commit left (SQLite may have rolled back already). */
static void
tx_rollback(void)
{
	step_done(stmt(ST_ROLLBACK));
	step_done(stmt(ST_COMMIT));
	if (h.depth > 0)
		h.depth--;
	if (h.depth == 0 && !sqlite3_get_autocommit(h.db))
		sqlite3_exec(h.db, "ROLLBACK", NULL, NULL, NULL);
}

void
history_batch_begin(void)
{
	if (h.db != NULL && tx_begin() != SQLITE_DONE)
		log_msg(LOG_WARNING, "history: cannot start a transaction: %s",
			sqlite3_errmsg(h.db));
}

void
history_batch_end(void)
{
	double t0 = now_ms();
	int rc;

	if (h.db == NULL || h.depth == 0)
		return;
	if ((rc = tx_commit()) != SQLITE_DONE) {
		tx_rollback();
		write_failed("committing a batch", rc);
	}
	write_timed(t0, "committing a batch");
}

/* ------------------------------------------------------------------ */
/* The checkpointer                                                    */
/* ------------------------------------------------------------------ */

static void *
checkpointer_main(void *arg)
{
	struct checkpointer *c = arg;
	sqlite3 *db = c->db;
	int rc, nlog, ncopied;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		while (!c->wanted && !c->quit)
			pthread_cond_wait(&c->cond, &c->lock);
		if (c->quit)
			break;
		c->wanted = false;
		pthread_mutex_unlock(&c->lock);
		rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE,
					       &nlog, &ncopied);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			log_msg(LOG_WARNING, "history: checkpoint: %s", sqlite3_errstr(rc));
		/* All of it copied back: the next commit starts the WAL over,
		 * and syncs.  Tell the main thread, which makes that commit
		 * when it has nothing else to do. */
		if (rc == SQLITE_OK && nlog > 0 && ncopied == nlog) {
			uint64_t one = 1;

			(void)!write(c->wake_fd, &one, sizeof one);
		}
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* Called by SQLite after each commit on the main connection. */
static int
wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	struct checkpointer *c = arg;

	(void)db;
	(void)name;
	if (pages < CHECKPOINT_PAGES || !c->started)
		return SQLITE_OK;
	pthread_mutex_lock(&c->lock);
	c->wanted = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return SQLITE_OK;
}

static void
checkpointer_start(void)
{
	struct checkpointer *c = &h.ckpt;
	int rc;

	/*
	 * Its connection is opened here and used once (a checkpoint of the
	 * WAL, empty at start-up), so that every file it needs is open
	 * before the daemon serves anything: its descriptors never change
	 * afterwards.  Then the thread owns it (SQLITE_OPEN_NOMUTEX: one
	 * thread at a time).
	 */
	c->wanted = c->quit = c->restart_due = false;
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->wake_fd == -1) {
		log_warn("history: checkpointer: eventfd: the WAL is copied back "
			 "only at exit");
		return;
	}
	rc = sqlite3_open_v2(h.path, &c->db, SQLITE_OPEN_READWRITE |
			     SQLITE_OPEN_NOMUTEX, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_busy_timeout(c->db, 1000);
		/* Read the database once: until a connection has, SQLite does
		 * not know it is in WAL mode, and its checkpoints do nothing.
		 * This also opens the -wal and -shm files now. */
		rc = sqlite3_exec(c->db, "SELECT count(*) FROM sqlite_master", NULL,
				  NULL, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_wal_checkpoint_v2(c->db, NULL,
						       SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		if (rc == SQLITE_BUSY)
			rc = SQLITE_OK;
	}
	if (rc != SQLITE_OK) {
		log_msg(LOG_WARNING, "history: checkpointer: %s: the WAL is copied back "
			"only at exit", sqlite3_errstr(rc));
		goto fail;
	}
	/* The thread inherits the main thread's mask: no signal reaches it. */
	rc = pthread_create(&c->thread, NULL, checkpointer_main, c);
	if (rc != 0) {
		log_msg(LOG_WARNING, "history: cannot start the checkpointer: %s: the "
			"WAL is copied back only at exit", strerror(rc));
		goto fail;
	}
	c->started = true;
	sqlite3_wal_hook(h.db, wal_hook, c);
	return;

fail:
	sqlite3_close(c->db);
	c->db = NULL;
	close(c->wake_fd);
	c->wake_fd = -1;
}

static void
checkpointer_stop(void)
{
	struct checkpointer *c = &h.ckpt;

	if (!c->started)
		return;
	sqlite3_wal_hook(h.db, NULL, NULL);
	pthread_mutex_lock(&c->lock);
	c->quit = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	c->started = false;
	sqlite3_close(c->db);
	c->db = NULL;
	close(c->wake_fd);
	c->wake_fd = -1;
}

/*
 * Start the WAL over now, while nothing waits for the main thread.  The
 * first commit into an empty or wholly checkpointed WAL writes the WAL's
 * header and syncs it (SQLite's guard against out-of-order writes after
 * a restart): an fdatasync, 0.3-2 ms on a virtual disk, which a run's
 * first commit would otherwise pay between handing tasks to one worker
 * and the next.  A commit that changes nothing visible does it here: at
 * start-up, and when the daemon falls idle after a checkpoint.
 */
static void
wal_start(void)
{
	char *sql = xasprintf("PRAGMA user_version = %d", HISTORY_SCHEMA);

	if (sqlite3_exec(h.db, sql, NULL, NULL, NULL) != SQLITE_OK)
		log_debug("history: starting the WAL: %s", sqlite3_errmsg(h.db));
	free(sql);
}

/* ------------------------------------------------------------------ */
/* Opening and closing                                                 */
/* ------------------------------------------------------------------ */

/* Create DIR and its missing parents, mode 0750. */
static int
make_dirs(const char *dir)
{
	char *p = xstrdup(dir);
	struct stat st;
	int rc = 0;

	for (char *s = p + 1; rc == 0; s++) {
		char c = *s;

		if (c != '/' && c != '\0')
			continue;
		*s = '\0';
		if (mkdir(p, 0750) == -1 && errno != EEXIST)
			rc = -1;
		*s = c;
		if (c == '\0')
			break;
	}
	free(p);
	if (rc == 0 && stat(dir, &st) == -1)
		return -1;
	if (rc == 0 && !S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return rc;
}

static void
close_db(void)
{
	for (int i = 0; i < ST_COUNT; i++) {
		sqlite3_finalize(h.st[i]);
		h.st[i] = NULL;
	}
	sqlite3_close(h.db);
	h.db = NULL;
}

/* Open PATH and make it ours; an sqlite3 result code, with what failed in
 * WHAT. */
static int
open_db(const char *path, const char **what)
{
	int rc, version = 0;
	sqlite3_stmt *s = NULL;
	char *sql;

	*what = "open";
	rc = sqlite3_open_v2(path, &h.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			     SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK)
		return rc;
	sqlite3_extended_result_codes(h.db, 0);
	sqlite3_busy_timeout(h.db, BUSY_TIMEOUT_MS);

	/* The first read of the file: a corrupt one fails here. */
	*what = "read the schema version";
	rc = sqlite3_prepare_v2(h.db, "PRAGMA user_version", -1, &s, NULL);
	if (rc == SQLITE_OK && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		version = sqlite3_column_int(s, 0);
		rc = SQLITE_OK;
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_OK)
		return rc;
	if (version > HISTORY_SCHEMA) {
		log_msg(LOG_ERR, "history: %s has schema version %d; this jobrund knows "
			"%d and will not touch it", path, version, HISTORY_SCHEMA);
		*what = "check the schema version";
		return SQLITE_MISMATCH;
	}

	*what = "set up the WAL";
	rc = sqlite3_exec(h.db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; "
			  "PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
			  NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return rc;
	/* A negative cache_size is in KiB. */
	sql = xasprintf("PRAGMA cache_size = -%d", CACHE_KIB);
	rc = sqlite3_exec(h.db, sql, NULL, NULL, NULL);
	free(sql);
	if (rc != SQLITE_OK)
		return rc;
	if (version == 0) {
		sql = xasprintf("BEGIN; %s PRAGMA user_version = %d; COMMIT;",
				schema_sql, HISTORY_SCHEMA);

		*what = "create the tables";
		rc = sqlite3_exec(h.db, sql, NULL, NULL, NULL);
		free(sql);
		if (rc != SQLITE_OK) {
			sqlite3_exec(h.db, "ROLLBACK", NULL, NULL, NULL);
			return rc;
		}
	}
	*what = "prepare the statements";
	for (int i = 0; i < ST_FIRST_LAZY; i++) {
		rc = prepare(i);
		if (rc != SQLITE_OK)
			return rc;
	}
	return SQLITE_OK;
}

/* Move a corrupt database (and its WAL) aside. */
static void
move_aside(const char *path)
{
	static const char *const suffixes[] = { "", "-wal", "-shm" };
	time_t now = time(NULL);

	for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
		char *from = xasprintf("%s%s", path, suffixes[i]);
		char *to = xasprintf("%s.corrupt-%lld%s", path, (long long)now,
				     suffixes[i]);

		if (rename(from, to) == 0 && i == 0)
			log_msg(LOG_ERR, "history: %s is corrupt: moved to %s; starting "
				"a new history", from, to);
		free(from);
		free(to);
	}
}

/*
 * SQLite's process-wide settings, made before its first connection: they
 * cannot change once SQLite is initialised.  If something else in the
 * process (a plugin) initialised it first, sqlite3_config refuses and the
 * defaults stay, which costs memory, nothing else.
 */
static void
sqlite_setup(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	/* No bulk allocation for a new connection's page cache (the third
	 * argument, 0 pages); pages come from sqlite3_malloc one by one. */
	(void)sqlite3_config(SQLITE_CONFIG_PAGECACHE, NULL, 0, 0);
}

int
history_open(const char *state_dir)
{
	const char *what;
	int rc;

	if (h.db != NULL)
		return 0;
	if (make_dirs(state_dir) == -1) {
		log_warn("history: cannot create state_dir %s: running without a "
			 "run history", state_dir);
		return -1;
	}
	free(h.path);
	h.path = xasprintf("%s/%s", state_dir, HISTORY_FILE);
	sqlite_setup();
	rc = open_db(h.path, &what);
	if (rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB) {
		close_db();
		move_aside(h.path);
		rc = open_db(h.path, &what);
	}
	if (rc != SQLITE_OK) {
		log_msg(LOG_ERR, "history: %s: cannot %s: %s: running without a run "
			"history", h.path, what, h.db ? sqlite3_errmsg(h.db) :
			sqlite3_errstr(rc));
		close_db();
		return -1;
	}
	h.failing = false;
	checkpointer_start();
	wal_start();
	log_debug("history: %s open (SQLite %s)", h.path, sqlite3_libversion());
	return 0;
}

void
history_close(void)
{
	if (h.db == NULL)
		return;
	checkpointer_stop();
	if (h.nwrites > 0)
		log_debug("history: %" PRIu64 " writes, %.3f ms on average, %.3f ms "
			  "at most", h.nwrites, h.total_ms / (double)h.nwrites, h.max_ms);
	/* Closing the last connection checkpoints and removes the WAL. */
	close_db();
	free(h.path);
	h.path = NULL;
}

int
history_checkpoint_fd(void)
{
	return h.ckpt.started ? h.ckpt.wake_fd : -1;
}

void
history_checkpoint_seen(void)
{
	uint64_t n;

	if (h.ckpt.started && read(h.ckpt.wake_fd, &n, sizeof n) == (ssize_t)sizeof n)
		h.ckpt.restart_due = true;
}

void
history_idle(void)
{
	if (h.db == NULL)
		return;
	/* Pages of the cache nobody holds: a later read takes them from the
	 * WAL or the file, in the kernel's page cache. */
	sqlite3_db_release_memory(h.db);
	if (h.ckpt.restart_due) {
		h.ckpt.restart_due = false;
		wal_start();
	}
}

void
history_stats(uint64_t *nwrites, double *mean_ms, double *max_ms)
{
	*nwrites = h.nwrites;
	*mean_ms = h.nwrites ? h.total_ms / (double)h.nwrites : 0;
	*max_ms = h.max_ms;
}

/* ------------------------------------------------------------------ */
/* Start-up                                                            */
/* ------------------------------------------------------------------ */

int
history_abandon(void)
{
	sqlite3_stmt *s = NULL;
	int n = 0, rc;

	if (h.db == NULL)
		return 0;
	/* SELECT then UPDATE, in one transaction: RETURNING needs SQLite
	 * 3.35, and Debian 11 has 3.34. */
	if ((rc = tx_begin()) != SQLITE_DONE)
		goto fail;
	rc = sqlite3_prepare_v2(h.db, "SELECT job, run FROM runs WHERE status = "
				"'running' ORDER BY job, run", -1, &s, NULL);
	if (rc != SQLITE_OK)
		goto rollback;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		log_msg(LOG_WARNING, "job %s: run %lld was running when jobrund stopped: "
			"recorded as abandoned (it is not run again)",
			(const char *)sqlite3_column_text(s, 0),
			(long long)sqlite3_column_int64(s, 1));
		n++;
	}
	sqlite3_finalize(s);
	s = NULL;
	if (rc != SQLITE_DONE)
		goto rollback;
	rc = sqlite3_prepare_v2(h.db, "UPDATE runs SET status = 'abandoned', ended = ?1 "
				"WHERE status = 'running'", -1, &s, NULL);
	if (rc != SQLITE_OK)
		goto rollback;
	sqlite3_bind_double(s, 1, (double)time(NULL));
	rc = step_done(s);
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE || (rc = tx_commit()) != SQLITE_DONE)
		goto rollback;
	return n;

rollback:
	tx_rollback();
fail:
	write_failed("marking interrupted runs abandoned", rc);
	return 0;
}

uint64_t
history_last_run_id(const char *job)
{
	sqlite3_stmt *s;
	uint64_t id = 0;

	if (h.db == NULL)
		return 0;
	s = stmt(ST_LAST_ID);
	sqlite3_bind_text(s, 1, job, -1, SQLITE_STATIC);
	if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
		id = (uint64_t)sqlite3_column_int64(s, 0);
	sqlite3_reset(s);
	return id;
}

int
history_last_fire(const char *job, time_t *when)
{
	sqlite3_stmt *s;
	int rc = -1;

	errno = ENOENT;
	if (h.db == NULL)
		return -1;
	s = stmt(ST_LAST_FIRE);
	sqlite3_bind_text(s, 1, job, -1, SQLITE_STATIC);
	if (sqlite3_step(s) == SQLITE_ROW) {
		*when = (time_t)sqlite3_column_int64(s, 0);
		rc = 0;
	}
	sqlite3_reset(s);
	return rc;
}

void
history_set_last_fire(const char *job, time_t when)
{
	sqlite3_stmt *s;
	double t0 = now_ms();
	int rc;

	if (h.db == NULL)
		return;
	s = stmt(ST_SET_FIRE);
	sqlite3_bind_text(s, 1, job, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)when);
	if ((rc = step_done(s)) != SQLITE_DONE)
		write_failed("saving a schedule time", rc);
	else
		write_worked(false);
	write_timed(t0, "saving a schedule time");
}

/* ------------------------------------------------------------------ */
/* Writing runs                                                        */
/* ------------------------------------------------------------------ */

static double
ts_real(const struct timespec *ts)
{
	return (double)ts->tv_sec + (double)ts->tv_nsec / 1e9;
}

enum run_status
run_info_status(const struct run_info *ri)
{
	if (ri->nfailed == 0)
		return RUN_OK;
	return ri->cancelled ? RUN_CANCELLED : RUN_FAILED;
}

void
history_run_begun(const struct run_info *ri)
{
	sqlite3_stmt *s;
	double t0 = now_ms();
	int rc;

	if (h.db == NULL)
		return;
	s = stmt(ST_RUN_INSERT);
	sqlite3_bind_text(s, 1, ri->job, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)ri->id);
	sqlite3_bind_text(s, 3, ri->trigger, -1, SQLITE_STATIC);
	sqlite3_bind_double(s, 4, ts_real(&ri->started));
	sqlite3_bind_int64(s, 5, (sqlite3_int64)ri->ntasks);
	if ((rc = step_done(s)) != SQLITE_DONE)
		write_failed("recording a run's start", rc);
	else
		write_worked(false);
	write_timed(t0, "recording a run's start");
}

static int
insert_task(const struct run_info *ri, const struct task_result *r)
{
	sqlite3_stmt *s = stmt(ST_TASK_INSERT);

	sqlite3_bind_text(s, 1, ri->job, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)ri->id);
	sqlite3_bind_int64(s, 3, (sqlite3_int64)r->index);
	sqlite3_bind_int(s, 4, r->attempt > 0 ? r->attempt : 1);
	if (r->input)
		sqlite3_bind_text(s, 5, r->input, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 6, status_name(r->status), -1, SQLITE_STATIC);
	sqlite3_bind_blob64(s, 7, r->output ? r->output : "",
			    r->output ? r->output_len : 0, SQLITE_STATIC);
	if (r->error)
		sqlite3_bind_text(s, 8, r->error, -1, SQLITE_STATIC);
	if (r->worker_output)
		sqlite3_bind_blob64(s, 9, r->worker_output, r->worker_output_len,
				    SQLITE_STATIC);
	sqlite3_bind_int64(s, 10, (sqlite3_int64)r->worker_output_dropped);
	sqlite3_bind_text(s, 11, mode_name(r->mode), -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 12, (sqlite3_int64)r->pid);
	sqlite3_bind_double(s, 13, ts_real(&r->started));
	sqlite3_bind_double(s, 14, r->wall_s);
	sqlite3_bind_double(s, 15, r->cpu_s);
	sqlite3_bind_int(s, 16, r->signal);
	sqlite3_bind_int(s, 17, r->exit_code);
	sqlite3_bind_int(s, 18, r->core_dumped);
	return step_done(s);
}

void
history_run_ended(const struct run_info *ri, int keep)
{
	sqlite3_stmt *s;
	double t0 = now_ms();
	int rc;

	if (h.db == NULL)
		return;
	if ((rc = tx_begin()) != SQLITE_DONE)
		goto fail;

	/* An upsert: the start's INSERT may have failed (disk full). */
	s = stmt(ST_RUN_END);
	sqlite3_bind_text(s, 1, ri->job, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)ri->id);
	sqlite3_bind_text(s, 3, ri->trigger, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 4, run_status_name(run_info_status(ri)), -1, SQLITE_STATIC);
	sqlite3_bind_double(s, 5, ts_real(&ri->started));
	sqlite3_bind_double(s, 6, ts_real(&ri->ended));
	sqlite3_bind_int64(s, 7, (sqlite3_int64)ri->ntasks);
	sqlite3_bind_int64(s, 8, (sqlite3_int64)ri->nok);
	sqlite3_bind_int64(s, 9, (sqlite3_int64)ri->nfailed);
	if ((rc = step_done(s)) != SQLITE_DONE)
		goto rollback;
	for (size_t i = 0; i < ri->ntasks; i++)
		if ((rc = insert_task(ri, &ri->tasks[i].result)) != SQLITE_DONE)
			goto rollback;
	if (keep > 0) {
		s = stmt(ST_PRUNE);
		sqlite3_bind_text(s, 1, ri->job, -1, SQLITE_STATIC);
		sqlite3_bind_int(s, 2, keep);
		if ((rc = step_done(s)) != SQLITE_DONE)
			goto rollback;
	}
	if ((rc = tx_commit()) != SQLITE_DONE)
		goto rollback;
	write_worked(true);
	write_timed(t0, "recording a run");
	return;

rollback:
	tx_rollback();
fail:
	write_failed("recording a run", rc);
	write_timed(t0, "recording a run");
}

/* ------------------------------------------------------------------ */
/* Queries                                                             */
/* ------------------------------------------------------------------ */

static const char *
column_text(sqlite3_stmt *s, int col)
{
	return (const char *)sqlite3_column_text(s, col);
}

int
history_list(const char *job, int limit,
	     void (*cb)(const struct history_run *hr, void *arg), void *arg)
{
	sqlite3_stmt *s;
	struct history_run hr;
	int n = 0, rc, st;

	if (h.db == NULL) {
		errno = ENODEV;
		return -1;
	}
	if ((s = lazy_stmt(job ? ST_LIST : ST_LIST_ALL)) == NULL)
		return -1;
	if (job)
		sqlite3_bind_text(s, 1, job, -1, SQLITE_STATIC);
	sqlite3_bind_int(s, 2, limit > 0 ? limit : -1);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		memset(&hr, 0, sizeof hr);
		hr.job = column_text(s, 0);
		hr.run = (uint64_t)sqlite3_column_int64(s, 1);
		hr.trigger = column_text(s, 2);
		st = run_status_from_name(column_text(s, 3) ? column_text(s, 3) : "");
		hr.status = st < 0 ? RUN_FAILED : (enum run_status)st;
		hr.started = sqlite3_column_double(s, 4);
		hr.ended = sqlite3_column_double(s, 5);
		hr.ntasks = (size_t)sqlite3_column_int64(s, 6);
		hr.nok = (size_t)sqlite3_column_int64(s, 7);
		hr.nfailed = (size_t)sqlite3_column_int64(s, 8);
		cb(&hr, arg);
		n++;
	}
	sqlite3_reset(s);
	if (rc != SQLITE_DONE) {
		log_msg(LOG_WARNING, "history: listing runs: %s", sqlite3_errstr(rc));
		errno = EIO;
		return -1;
	}
	return n;
}

static char *
column_copy(sqlite3_stmt *s, int col, size_t *len)
{
	const void *p = sqlite3_column_blob(s, col);
	size_t n = (size_t)sqlite3_column_bytes(s, col);
	char *c;

	if (sqlite3_column_type(s, col) == SQLITE_NULL)
		return NULL;
	c = xmalloc(n + 1);
	if (n > 0)
		memcpy(c, p, n);
	c[n] = '\0';
	if (len)
		*len = n;
	return c;
}

int
history_tasks(const char *job, uint64_t run,
	      void (*cb)(const struct task_result *r, void *arg), void *arg)
{
	sqlite3_stmt *s;
	struct task_result r;
	double started;
	int n = 0, rc, st;
	bool exists;

	if (h.db == NULL) {
		errno = ENODEV;
		return -1;
	}
	if ((s = lazy_stmt(ST_RUN_EXISTS)) == NULL)
		return -1;
	sqlite3_bind_text(s, 1, job, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)run);
	exists = sqlite3_step(s) == SQLITE_ROW;
	sqlite3_reset(s);
	if (!exists) {
		errno = ENOENT;
		return -1;
	}
	if ((s = lazy_stmt(ST_TASKS)) == NULL)
		return -1;
	sqlite3_bind_text(s, 1, job, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, (sqlite3_int64)run);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		memset(&r, 0, sizeof r);
		r.job = job;
		r.run = run;
		r.index = (size_t)sqlite3_column_int64(s, 0);
		r.attempt = sqlite3_column_int(s, 1);
		r.input = column_text(s, 2);
		st = status_from_name(column_text(s, 3) ? column_text(s, 3) : "");
		r.status = st < 0 ? TASK_FAILED : (enum task_status)st;
		r.output = column_copy(s, 4, &r.output_len);
		if (r.output == NULL)
			r.output = xstrdup("");
		r.error = column_copy(s, 5, NULL);
		r.worker_output = column_copy(s, 6, &r.worker_output_len);
		r.worker_output_dropped = (size_t)sqlite3_column_int64(s, 7);
		r.mode = column_text(s, 8) && strcmp(column_text(s, 8), "thread") == 0 ?
		    MODE_THREAD : MODE_PROCESS;
		r.pid = (pid_t)sqlite3_column_int64(s, 9);
		started = sqlite3_column_double(s, 10);
		r.started.tv_sec = (time_t)started;
		r.started.tv_nsec = (long)((started - (double)r.started.tv_sec) * 1e9);
		if (r.started.tv_nsec < 0 || r.started.tv_nsec > 999999999)
			r.started.tv_nsec = 0;
		r.wall_s = sqlite3_column_double(s, 11);
		r.cpu_s = sqlite3_column_double(s, 12);
		r.signal = sqlite3_column_int(s, 13);
		r.exit_code = sqlite3_column_int(s, 14);
		r.core_dumped = sqlite3_column_int(s, 15) != 0;
		cb(&r, arg);
		result_clear(&r);
		n++;
	}
	sqlite3_reset(s);
	if (rc != SQLITE_DONE) {
		log_msg(LOG_WARNING, "history: reading run %" PRIu64 " of job %s: %s",
			run, job, sqlite3_errstr(rc));
		errno = EIO;
		return -1;
	}
	return n;
}
