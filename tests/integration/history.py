"""The run history (STATE_DIR/history.db, SQLite): every run and its
tasks' results are recorded; run numbers go on across restarts; a run in
flight when the daemon is SIGKILLed is `abandoned` at the next start and
not run again; retention; shutdown with running work in both modes is
recorded as cancelled; a failing disk is logged once while scheduling
goes on.

The database is read with Python's own sqlite3 module, as any user of
the file would, while the daemon runs (WAL readers do not block it).
"""

import os
import re
import resource
import signal
import sqlite3
import stat
import subprocess
import time

from jrtest import Daemon, JOBRUND, main, processes_matching, wait_for


def db_path(env):
    return os.path.join(env.state_dir, "history.db")


def query(env, sql, *args):
    """Rows of SQL on the history; [] while the file does not exist."""
    if not os.path.exists(db_path(env)):
        return []
    con = sqlite3.connect("file:%s?mode=ro" % db_path(env), uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []   # the tables are not created yet
    finally:
        con.close()


def test_runs_and_tasks_recorded(tap, env):
    env.state_dir = os.path.join(env.dir, "deep", "state")
    cfg = env.config("""
  { name = "h_ok"; plugin = "square"; mode = "thread"; inputs = [ 2, 3 ]; },
  { name = "h_bad"; plugin = "crash"; mode = "process"; inputs = [ "ok", "exit3" ]; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job h_bad: run 1 finished") and d.wait_log(r"job h_ok: run 1 finished"),
           "both jobs ran", d.log()[-5:])
    st = os.stat(env.state_dir)
    tap.eq(stat.S_IMODE(st.st_mode), 0o750, "a missing state_dir is created, mode 0750")
    runs = wait_for(lambda: query(env, "SELECT job, run, trigger, status, ntasks, nok, "
                                       "nfailed FROM runs WHERE status <> 'running' "
                                       "ORDER BY job") if len(query(
                                  env, "SELECT 1 FROM runs WHERE status <> 'running'")) == 2
                    else None)
    tap.eq(runs, [("h_bad", 1, "start", "failed", 2, 1, 1), ("h_ok", 1, "start", "ok", 2, 2, 0)],
           "each run is recorded with its status and counts")
    tasks = query(env, "SELECT job, idx, attempt, input, status, CAST(output AS TEXT), "
                       "mode, exit_code FROM tasks ORDER BY job, idx")
    tap.eq(tasks, [("h_bad", 0, 1, "ok", "ok", "ok", "process", -1),
                   ("h_bad", 1, 1, "exit3", "crashed", "", "process", 3),
                   ("h_ok", 0, 1, "2", "ok", "4", "thread", -1),
                   ("h_ok", 1, 1, "3", "ok", "9", "thread", -1)],
           "with each task's result")
    mode = query(env, "PRAGMA journal_mode")
    tap.eq(mode, [("wal",)], "the database is in WAL mode")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")
    tap.eq(query(env, "PRAGMA integrity_check"), [("ok",)], "the database is sound")


def test_sigkill_abandoned_not_rerun(tap, env):
    jobs = """
  { name = "long"; plugin = "sleep"; mode = "process"; inputs = [ "60" ];
    schedule = "%s"; },
  { name = "tick"; plugin = "square"; mode = "thread"; inputs = [ 1 ];
    schedule = "@every 100ms"; }"""
    cfg = env.config(jobs % "@start")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job long: run 1 started") and d.wait_log(r"job tick: run 5 finished"),
           "a long run is in flight, short ones come and go")
    tap.ok(wait_for(lambda: query(env, "SELECT status FROM runs WHERE job = 'long'") ==
                    [("running",)]), "the long run is recorded as running at once")
    workers = processes_matching("jobrund-worker: long")
    d.proc.kill()   # SIGKILL: no chance to write anything
    d.proc.wait()
    tap.ok(wait_for(lambda: not any(os.path.exists("/proc/%d" % p) for p in workers)),
           "the daemon's workers die with it")
    last = query(env, "SELECT max(run) FROM runs WHERE job = 'tick'")[0][0]
    tap.eq(query(env, "PRAGMA integrity_check"), [("ok",)],
           "after SIGKILL the database is sound")
    tap.eq(query(env, "SELECT count(*) FROM runs r WHERE status NOT IN ('running') AND "
                      "ntasks <> (SELECT count(*) FROM tasks t WHERE t.job = r.job AND "
                      "t.run = r.run)"), [(0,)],
           "no half-written run: each ended run has all its tasks")
    # Restart with the long job @manual: nothing may start it again.
    cfg = env.config(jobs % "@manual")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job long: run 1 was running when jobrund stopped: recorded as "
                      r"abandoned \(it is not run again\)"), "the in-flight run is abandoned, "
           "and that is logged", d.log()[:10])
    tap.ok(d.wait_log(r"job tick: run %d started" % (last + 5)),
           "run numbers go on from the history (unique across restarts)", d.log()[-5:])
    tap.eq(d.count(r"job tick: run 1 started"), 0, "no run number is reused")
    tap.eq(query(env, "SELECT run, status FROM runs WHERE job = 'long'"), [(1, "abandoned")],
           "the history shows it abandoned")
    tap.eq(d.count(r"job long: run \d+ started"), 0, "and it is not rerun")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")


def test_retention(tap, env):
    cfg = env.config("""
  { name = "keep3"; plugin = "square"; mode = "thread"; inputs = [ 1 ];
    schedule = "@every 20ms"; },
  { name = "keep5"; plugin = "square"; mode = "process"; inputs = [ 1, 2 ];
    schedule = "@every 20ms"; history_keep = 5; }""", extra="history_keep = 3;\n")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job keep3: run 20 finished") and d.wait_log(r"job keep5: run 20 finished"),
           "many runs", d.log()[-5:])
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")
    for job, keep in (("keep3", 3), ("keep5", 5)):
        runs = [r for (r,) in query(env, "SELECT run FROM runs WHERE job = ? ORDER BY run", job)]
        last = query(env, "SELECT max(run) FROM runs WHERE job = ?", job)[0][0]
        tap.eq(runs, list(range(last - keep + 1, last + 1)),
               "%s: the %d newest runs are kept" % (job, keep))
        tasks = query(env, "SELECT DISTINCT run FROM tasks WHERE job = ? ORDER BY run", job)
        tap.eq([r for (r,) in tasks], runs, "%s: with their tasks only" % job)


def test_shutdown_recorded(tap, env):
    cfg = env.config("""
  { name = "sd_t"; plugin = "sleep"; mode = "thread"; workers = 2; inputs = [ 60, 60 ]; },
  { name = "sd_p"; plugin = "crash"; mode = "process"; workers = 2;
    inputs = [ "hang", "hang" ]; }""", extra="shutdown_grace = 1.0;\n")
    for sig in (signal.SIGTERM, signal.SIGINT):
        name = signal.Signals(sig).name
        d = Daemon(env, cfg)
        tap.ok(wait_for(lambda: len(processes_matching("jobrund-worker: sd_p")) == 2) and
               d.wait_log(r"job sd_t: run \d+ started"), "%s: work is running" % name)
        t0 = time.monotonic()
        d.signal(sig)
        # A second one, once the first is taken (pending ones merge),
        # changes nothing: the workers ignoring SIGTERM keep the daemon
        # for shutdown_grace, so it is taken too.
        second = d.wait_log(r"%s: stopping" % name)
        d.signal(sig)
        rc = d.wait_exit()
        took = time.monotonic() - t0
        tap.eq(rc, 0, "%s with work running: exit 0" % name)
        tap.ok(took < 1.0 + 1.0 + 3.0, "%s: within shutdown_grace plus a second (and slack)"
               % name, took)
        # The second signal may arrive after the shutdown has already
        # finished (nothing was running yet): then it is simply not seen.
        # Either way it must not break the shutdown (exit 0 above).
        tap.ok(second and d.count(r"%s: already stopping" % name) <= 1 and
               d.count(r"%s: stopping" % name) == 1,
               "%s: a second one does not start a second shutdown" % name,
               d.log()[-8:])
        tap.eq(processes_matching("jobrund-worker: sd_p"), [], "%s: no worker left" % name)
        runs = query(env, "SELECT job, status, nok, nfailed FROM runs WHERE run = "
                          "(SELECT max(run) FROM runs r WHERE r.job = runs.job) ORDER BY job")
        tap.eq(runs, [("sd_p", "cancelled", 0, 2), ("sd_t", "cancelled", 0, 2)],
               "%s: both modes' runs are recorded as cancelled" % name)
        tasks = query(env, "SELECT DISTINCT status FROM tasks")
        tap.eq(tasks, [("cancelled",)], "%s: and their tasks" % name)


def test_failing_disk_logged_once(tap, env):
    os.makedirs(env.state_dir)
    cfg = env.config("""
  { name = "fd_tick"; plugin = "square"; mode = "thread"; inputs = [ 1 ];
    schedule = "@every 10ms"; }""")

    def small_files():
        # Writes past 256 KiB fail (EFBIG, SIGXFSZ ignored): the database
        # cannot grow, like on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    d = Daemon.__new__(Daemon)
    d.env = env
    d.proc = subprocess.Popen([JOBRUND, "-e", "-c", cfg], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=small_files)
    d.pid = d.proc.pid
    d.lines = []
    import threading
    d.lock = threading.Lock()
    d.reader = threading.Thread(target=d._read, daemon=True)
    d.reader.start()
    env.daemons.append(d)
    tap.ok(d.wait_log(r"history: .*runs are not recorded until", timeout=120),
           "a failing write is logged", d.log()[-5:])
    n = d.count(r"job fd_tick: run \d+ finished")
    tap.ok(d.wait_log(r"job fd_tick: run \d+ finished", n=n + 50),
           "scheduling goes on", d.log()[-3:])
    tap.eq(d.count(r"history: .*runs are not recorded until"), 1,
           "logged once, not once per write")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")


main([test_runs_and_tasks_recorded, test_sigkill_abandoned_not_rerun, test_retention,
      test_shutdown_recorded, test_failing_disk_logged_once])
