/*
 * test_history.c - unit tests for daemon/history.c, on a database in a
 * fresh temporary directory: runs and tasks written and read back through
 * the query API (every field of a result, binary output included),
 * retention that spares running runs, abandoning at start-up, run numbers
 * and cron times that survive a reopen, batches, a corrupt file moved
 * aside, a newer schema left alone, and runs recorded without an fsync,
 * also after a checkpoint.
 */
#include "config.h"

#include <sys/stat.h>
#include <sys/syscall.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "jobrund.h"

static char *dir;

/* fsync and fdatasync, counted: SQLite's calls reach these, not libc's. */
static int syncs;

int
fsync(int fd)
{
	syncs++;
	return (int)syscall(SYS_fsync, fd);
}

int
fdatasync(int fd)
{
	syncs++;
	return (int)syscall(SYS_fdatasync, fd);
}

static int
setup(void **state)
{
	char tmpl[] = "/tmp/jobrund-history-XXXXXX";

	(void)state;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	dir = xasprintf("%s/state/sub", tmpl);
	return 0;
}

static int
teardown(void **state)
{
	char *cmd;

	(void)state;
	history_close();
	cmd = xasprintf("rm -rf '%.*s'", (int)(strstr(dir, "/state/sub") - dir), dir);
	(void)!system(cmd);
	free(cmd);
	free(dir);
	dir = NULL;
	return 0;
}

/* A run of JOB with NTASKS tasks; task I's output is "out-I" (task 1's
 * holds a NUL byte), every other task fails. */
struct fake_run {
	struct run_info ri;
	struct task tasks[4];
	char out[4][16];
	char err[16];
};

static void
fake_run(struct fake_run *fr, const char *job, uint64_t id, size_t ntasks)
{
	memset(fr, 0, sizeof *fr);
	fr->ri.job = job;
	fr->ri.id = id;
	fr->ri.trigger = "schedule";
	fr->ri.started.tv_sec = 1800000000 + (time_t)id;
	fr->ri.ntasks = ntasks;
	fr->ri.tasks = fr->tasks;
	for (size_t i = 0; i < ntasks; i++) {
		struct task_result *r = &fr->tasks[i].result;

		r->job = job;
		r->run = id;
		r->index = i;
		r->attempt = (int)i + 1;
		r->input = i == 0 ? NULL : "in";
		r->status = i % 2 ? TASK_FAILED : TASK_OK;
		snprintf(fr->out[i], sizeof fr->out[i], "out-%zu", i);
		if (i == 1)
			fr->out[i][3] = '\0';          /* "out\0" "1" */
		r->output = fr->out[i];
		r->output_len = strlen("out-0");
		snprintf(fr->err, sizeof fr->err, "it broke");
		r->error = i % 2 ? fr->err : NULL;
		r->mode = MODE_PROCESS;
		r->pid = 4242;
		r->started.tv_sec = 1800000000;
		r->started.tv_nsec = 250000000;
		r->wall_s = 0.5;
		r->cpu_s = 0.25;
		r->signal = i == 1 ? 9 : 0;
		r->exit_code = -1;
	}
}

static void
fake_end(struct fake_run *fr, bool cancelled)
{
	fr->ri.ended.tv_sec = fr->ri.started.tv_sec + 1;
	fr->ri.nfailed = fr->ri.ntasks / 2;
	fr->ri.nok = fr->ri.ntasks - fr->ri.nfailed;
	fr->ri.cancelled = cancelled;
}

struct collected {
	struct history_run runs[16];
	char jobs[16][32], triggers[16][32];
	size_t n;
	struct task_result tasks[8];
	char outputs[8][16], errors[8][32], inputs[8][16];
	bool has_input[8];
};

static void
collect_run(const struct history_run *hr, void *arg)
{
	struct collected *c = arg;

	assert_true(c->n < 16);
	c->runs[c->n] = *hr;
	snprintf(c->jobs[c->n], sizeof c->jobs[0], "%s", hr->job);
	snprintf(c->triggers[c->n], sizeof c->triggers[0], "%s", hr->trigger);
	c->runs[c->n].job = c->jobs[c->n];
	c->runs[c->n].trigger = c->triggers[c->n];
	c->n++;
}

static void
collect_task(const struct task_result *r, void *arg)
{
	struct collected *c = arg;
	size_t i = c->n++;

	assert_true(i < 8);
	/* A copy by value, whose output may point into *R (output_small):
	 * it is pointed at the test's own buffer at once, and never freed. */
	c->tasks[i] = *r;
	assert_true(r->output_len < sizeof c->outputs[i]);
	memcpy(c->outputs[i], r->output, r->output_len + 1);
	c->tasks[i].output = c->outputs[i];
	snprintf(c->errors[i], sizeof c->errors[i], "%s", r->error ? r->error : "");
	c->has_input[i] = r->input != NULL;
	snprintf(c->inputs[i], sizeof c->inputs[i], "%s", r->input ? r->input : "");
}

static void
test_open_creates(void **state)
{
	struct stat st;
	char *path;

	(void)state;
	assert_false(history_available());
	assert_int_equal(history_open(dir), 0);
	assert_true(history_available());
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0750);
	path = xasprintf("%s/history.db", dir);
	assert_int_equal(stat(path, &st), 0);
	free(path);
}

static void
test_roundtrip(void **state)
{
	struct fake_run fr;
	struct collected *c = xcalloc(1, sizeof *c);

	(void)state;
	assert_int_equal(history_open(dir), 0);
	fake_run(&fr, "alpha", 7, 2);
	history_run_begun(&fr.ri);

	/* While it runs: listed as running, no tasks yet. */
	assert_int_equal(history_list("alpha", 10, collect_run, c), 1);
	assert_int_equal(c->runs[0].status, RUN_RUNNING);
	assert_int_equal(c->runs[0].ntasks, 2);
	assert_true(c->runs[0].ended == 0);
	c->n = 0;
	assert_int_equal(history_tasks("alpha", 7, collect_task, c), 0);

	fake_end(&fr, false);
	history_run_ended(&fr.ri, 100);
	c->n = 0;
	assert_int_equal(history_list("alpha", 10, collect_run, c), 1);
	assert_string_equal(c->runs[0].job, "alpha");
	assert_int_equal(c->runs[0].run, 7);
	assert_string_equal(c->runs[0].trigger, "schedule");
	assert_int_equal(c->runs[0].status, RUN_FAILED);
	assert_int_equal(c->runs[0].nok, 1);
	assert_int_equal(c->runs[0].nfailed, 1);
	assert_true(c->runs[0].started == 1800000007.0);
	assert_true(c->runs[0].ended == 1800000008.0);

	c->n = 0;
	assert_int_equal(history_tasks("alpha", 7, collect_task, c), 2);
	assert_int_equal(c->tasks[0].index, 0);
	assert_int_equal(c->tasks[0].attempt, 1);
	assert_false(c->has_input[0]);
	assert_int_equal(c->tasks[0].status, TASK_OK);
	assert_int_equal(c->tasks[0].output_len, 5);
	assert_memory_equal(c->outputs[0], "out-0", 5);
	assert_string_equal(c->errors[0], "");
	assert_int_equal(c->tasks[1].attempt, 2);
	assert_true(c->has_input[1]);
	assert_string_equal(c->inputs[1], "in");
	assert_int_equal(c->tasks[1].status, TASK_FAILED);
	assert_memory_equal(c->outputs[1], "out\0" "1", 5);    /* binary kept */
	assert_string_equal(c->errors[1], "it broke");
	assert_int_equal(c->tasks[1].mode, MODE_PROCESS);
	assert_int_equal(c->tasks[1].pid, 4242);
	assert_int_equal(c->tasks[1].started.tv_sec, 1800000000);
	assert_true(c->tasks[1].started.tv_nsec > 249000000 &&
		    c->tasks[1].started.tv_nsec < 251000000);
	assert_true(c->tasks[1].wall_s == 0.5 && c->tasks[1].cpu_s == 0.25);
	assert_int_equal(c->tasks[1].signal, 9);
	assert_int_equal(c->tasks[1].exit_code, -1);

	errno = 0;
	assert_int_equal(history_tasks("alpha", 8, collect_task, c), -1);
	assert_int_equal(errno, ENOENT);
	free(c);
}

static void
test_statuses(void **state)
{
	struct fake_run fr;

	(void)state;
	fake_run(&fr, "s", 1, 2);
	fake_end(&fr, false);
	assert_int_equal(run_info_status(&fr.ri), RUN_FAILED);
	fr.ri.cancelled = true;
	assert_int_equal(run_info_status(&fr.ri), RUN_CANCELLED);
	fr.ri.nfailed = 0;
	assert_int_equal(run_info_status(&fr.ri), RUN_OK);
	assert_string_equal(run_status_name(RUN_ABANDONED), "abandoned");
	assert_int_equal(run_status_from_name("cancelled"), RUN_CANCELLED);
	assert_int_equal(run_status_from_name("nope"), -1);
}

static void
test_retention_spares_running(void **state)
{
	struct fake_run fr, running;
	struct collected *c = xcalloc(1, sizeof *c);

	(void)state;
	assert_int_equal(history_open(dir), 0);
	/* Run 1 stays running (overlap = allow) while 2..6 end. */
	fake_run(&running, "beta", 1, 1);
	history_run_begun(&running.ri);
	for (uint64_t id = 2; id <= 6; id++) {
		fake_run(&fr, "beta", id, 1);
		history_run_begun(&fr.ri);
		fake_end(&fr, false);
		history_run_ended(&fr.ri, 2);
	}
	/* Another job is not touched by beta's retention. */
	fake_run(&fr, "gamma", 1, 1);
	history_run_begun(&fr.ri);
	fake_end(&fr, false);
	history_run_ended(&fr.ri, 2);

	assert_int_equal(history_list("beta", 0, collect_run, c), 3);
	assert_int_equal(c->runs[0].run, 6);
	assert_int_equal(c->runs[1].run, 5);
	assert_int_equal(c->runs[2].run, 1);
	assert_int_equal(c->runs[2].status, RUN_RUNNING);
	c->n = 0;
	assert_int_equal(history_tasks("beta", 4, collect_task, c), -1);
	assert_int_equal(history_list("gamma", 0, collect_run, c), 1);
	/* The limit, and every job's runs at once. */
	c->n = 0;
	assert_int_equal(history_list("beta", 1, collect_run, c), 1);
	c->n = 0;
	assert_int_equal(history_list(NULL, 0, collect_run, c), 4);
	free(c);
}

static void
test_reopen_abandon_ids_fire(void **state)
{
	struct fake_run fr;
	struct collected *c = xcalloc(1, sizeof *c);
	time_t when = 0;

	(void)state;
	assert_int_equal(history_open(dir), 0);
	assert_int_equal(history_last_run_id("delta"), 0);
	assert_int_equal(history_last_fire("delta", &when), -1);
	fake_run(&fr, "delta", 41, 1);
	history_run_begun(&fr.ri);
	fake_end(&fr, false);
	history_run_ended(&fr.ri, 10);
	fake_run(&fr, "delta", 42, 1);
	history_run_begun(&fr.ri);              /* in flight at "the crash" */
	history_set_last_fire("delta", 1800000060);
	history_close();

	assert_int_equal(history_open(dir), 0);
	assert_int_equal(history_abandon(), 1);
	assert_int_equal(history_abandon(), 0);
	assert_int_equal(history_last_run_id("delta"), 42);
	assert_int_equal(history_last_fire("delta", &when), 0);
	assert_int_equal(when, 1800000060);
	history_set_last_fire("delta", 1800000120);
	assert_int_equal(history_last_fire("delta", &when), 0);
	assert_int_equal(when, 1800000120);
	assert_int_equal(history_list("delta", 1, collect_run, c), 1);
	assert_int_equal(c->runs[0].run, 42);
	assert_int_equal(c->runs[0].status, RUN_ABANDONED);
	assert_true(c->runs[0].ended > 0);
	free(c);
}

static void
test_batch(void **state)
{
	struct fake_run fr;
	struct collected *c = xcalloc(1, sizeof *c);

	(void)state;
	assert_int_equal(history_open(dir), 0);
	/* A run's transaction nests inside a batch. */
	history_batch_begin();
	history_set_last_fire("eps", 1800000000);
	fake_run(&fr, "eps", 1, 2);
	history_run_begun(&fr.ri);
	fake_end(&fr, false);
	history_run_ended(&fr.ri, 5);
	history_batch_end();
	assert_int_equal(history_list("eps", 0, collect_run, c), 1);
	c->n = 0;
	assert_int_equal(history_tasks("eps", 1, collect_task, c), 2);
	free(c);
}

/* A run is recorded without waiting for the disk: the WAL's first commit
 * syncs its header, and history_open has made that commit already. */
static void
test_run_written_without_sync(void **state)
{
	struct fake_run fr;

	(void)state;
	syncs = 0;
	assert_int_equal(history_open(dir), 0);
	assert_true(syncs > 0);                 /* the counting works */
	syncs = 0;
	fake_run(&fr, "quick", 1, 2);
	history_run_begun(&fr.ri);
	fake_end(&fr, false);
	history_run_ended(&fr.ri, 5);
	assert_int_equal(syncs, 0);
	/* Reopened, as at the daemon's next start: the same. */
	history_close();
	assert_int_equal(history_open(dir), 0);
	syncs = 0;
	fake_run(&fr, "quick", 2, 2);
	history_run_begun(&fr.ri);
	assert_int_equal(syncs, 0);
}

/* Runs until the checkpointer has emptied the WAL: its descriptor says
 * so, and history_idle (what the daemon calls then) starts the WAL over,
 * so that the next run does not sync either. */
static void
test_wal_started_over_after_checkpoint(void **state)
{
	struct fake_run fr;
	struct pollfd pfd = { .events = POLLIN };
	uint64_t id = 0;
	int ready;

	(void)state;
	assert_int_equal(history_open(dir), 0);
	pfd.fd = history_checkpoint_fd();
	assert_true(pfd.fd >= 0);
	do {
		fake_run(&fr, "busy", ++id, 4);
		history_run_begun(&fr.ri);
		fake_end(&fr, false);
		history_run_ended(&fr.ri, 0);
	} while ((ready = poll(&pfd, 1, 0)) == 0 && id < 50000);
	assert_int_equal(ready, 1);
	/* A checkpoint the last commits set going may still run: let it end
	 * (it says so too), or give up after a second. */
	do
		history_checkpoint_seen();
	while (poll(&pfd, 1, 1000) == 1);
	history_idle();
	syncs = 0;
	fake_run(&fr, "busy", ++id, 4);
	history_run_begun(&fr.ri);
	fake_end(&fr, false);
	history_run_ended(&fr.ri, 0);
	assert_int_equal(syncs, 0);
}

static void
test_corrupt_moved_aside(void **state)
{
	static const char junk[] = "this is not a database, not at all; this is "
		"not a database, not at all; this is not a database.\n";
	char *path, *cmd;
	int fd;

	(void)state;
	assert_int_equal(history_open(dir), 0);
	history_close();
	path = xasprintf("%s/history.db", dir);
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, junk, sizeof junk - 1), (ssize_t)(sizeof junk - 1));
	close(fd);
	assert_int_equal(history_open(dir), 0);         /* a new one */
	assert_int_equal(history_last_run_id("x"), 0);
	history_close();
	cmd = xasprintf("ls '%s' | grep -q '^history.db.corrupt-'", dir);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	free(path);
}

static void
test_newer_schema_refused(void **state)
{
	sqlite3 *db;
	char *path;

	(void)state;
	assert_int_equal(history_open(dir), 0);
	history_close();
	path = xasprintf("%s/history.db", dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(history_open(dir), -1);
	assert_false(history_available());
	errno = 0;
	assert_int_equal(history_list("x", 1, collect_run, NULL), -1);
	assert_int_equal(errno, ENODEV);
	free(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_creates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
		cmocka_unit_test(test_statuses),
		cmocka_unit_test_setup_teardown(test_retention_spares_running, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_abandon_ids_fire, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_run_written_without_sync, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wal_started_over_after_checkpoint,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_moved_aside, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
	};

	log_init("test_history", false, LOG_CRIT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
