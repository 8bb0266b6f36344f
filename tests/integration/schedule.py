"""Scheduling: the overlap policies, retries with backoff, catch-up after
downtime, time zones, and SIGHUP reload as a diff (a broken file, a
changed running job, an unchanged job's cadence, ten thousand jobs, a
storm of SIGHUPs).

Runs are followed through the daemon's log (-e): every line carries the
daemon's own timestamp, so orders and gaps are measured where they
happen, not where the test happens to read them.
"""

import os
import re
import signal
import sqlite3
import time

from jrtest import Daemon, JOBRUND, main, processes_matching, run, wait_for

LINE_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) ")


def stamp(line):
    """The daemon's time of a log line, in seconds since its midnight."""
    m = LINE_TIME.match(line)
    if not m:
        return None
    h, mi, s, ms = (int(x) for x in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000.0


def runs_events(d, job):
    """[(time, 'start'|'end', run)] of JOB's runs, in log order."""
    rx = re.compile(r"job %s: run (\d+) (started|finished)" % re.escape(job))
    out = []
    for line in d.log():
        m = rx.search(line)
        if m:
            out.append((stamp(line), "start" if m.group(2) == "started" else "end",
                        int(m.group(1))))
    return out


def max_active(events):
    """The most runs active at once, from start/end events in order."""
    active = best = 0
    for _, kind, _ in events:
        active += 1 if kind == "start" else -1
        best = max(best, active)
    return best


def starts(d, job):
    """Times of JOB's run starts, midnight wrap undone."""
    out, last, add = [], None, 0
    for t, kind, _ in runs_events(d, job):
        if kind != "start" or t is None:
            continue
        if last is not None and t + add < last:
            add += 86400
        out.append(t + add)
        last = t + add
    return out


def max_gap(times):
    return max((b - a for a, b in zip(times, times[1:])), default=0)


# --------------------------------------------------------------------------
# Overlap

def test_overlap_skip(tap, env):
    cfg = env.config("""
  { name = "ov_skip"; plugin = "sleep"; mode = "thread"; inputs = [ "0.5" ];
    schedule = "@every 100ms"; overlap = "skip"; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job ov_skip: run 3 finished"), "skip: runs go on", d.log()[-10:])
    tap.ok(d.count(r"job ov_skip: previous run still active: run skipped "
                   r"\(overlap = skip; \d+ skipped so far\)") >= 3,
           "skip: skipped firings are counted and logged", d.log()[-10:])
    tap.eq(max_active(runs_events(d, "ov_skip")), 1, "skip: never two runs at once")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "skip: exit 0")


def test_overlap_queue(tap, env):
    cfg = env.config("""
  { name = "ov_queue"; plugin = "sleep"; mode = "process"; inputs = [ "0.4" ];
    schedule = "@every 100ms"; overlap = "queue"; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job ov_queue: run 4 finished"), "queue: runs go on", d.log()[-10:])
    ev = runs_events(d, "ov_queue")
    tap.eq(max_active(ev), 1, "queue: never two runs at once")
    tap.ok(d.count(r"job ov_queue: previous run still active: run queued") >= 2,
           "queue: a firing during a run is queued")
    tap.ok(d.count(r"job ov_queue: a run is already queued: this firing is merged") >= 2,
           "queue: at most one is pending: the next firings merge into it")
    # Each queued run starts as the previous one ends, not a period later.
    ends = {r: t for t, k, r in ev if k == "end"}
    begins = {r: t for t, k, r in ev if k == "start"}
    lag = [begins[r + 1] - ends[r] for r in ends if r + 1 in begins]
    tap.ok(lag and max(lag) < 0.09, "queue: the queued run starts when the active one ends",
           lag)
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "queue: exit 0")


def test_overlap_replace(tap, env):
    for mode in ("thread", "process"):
        name = "ov_repl_" + mode[0]
        cfg = env.config("""
  { name = "%s"; plugin = "sleep"; mode = "%s"; inputs = [ "30" ];
    schedule = "@every 300ms"; overlap = "replace"; kill_grace = "200ms"; }"""
                         % (name, mode))
        d = Daemon(env, cfg)
        tap.ok(d.wait_log(r"job %s: run 3 started" % name),
               "replace (%s): runs keep starting" % mode, d.log()[-10:])
        tap.ok(d.count(r"job %s: cancelling the active run to start a new one "
                       r"\(overlap = replace\)" % name) >= 2,
               "replace (%s): the active run is cancelled" % mode)
        tap.ok(d.count(r"job %s run 1 task 0 input=30: cancelled" % name) == 1,
               "replace (%s): its task ends cancelled" % mode, d.log()[-10:])
        ev = runs_events(d, name)
        tap.eq(max_active(ev), 1,
               "replace (%s): the new run starts once the cancelled one has ended" % mode)
        d.signal(signal.SIGTERM)
        tap.eq(d.wait_exit(), 0, "replace (%s): exit 0" % mode)
        tap.eq(processes_matching("jobrund-worker: " + name), [],
               "replace (%s): no worker left" % mode)


def test_overlap_allow(tap, env):
    cfg = env.config("""
  { name = "ov_allow"; plugin = "sleep"; mode = "thread"; workers = 4;
    inputs = [ "0.5" ]; schedule = "@every 100ms"; overlap = "allow";
    max_concurrent_runs = 2; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job ov_allow: run 4 finished"), "allow: runs go on", d.log()[-10:])
    ev = runs_events(d, "ov_allow")
    tap.eq(max_active(ev), 2, "allow: runs overlap, up to max_concurrent_runs")
    tap.ok(d.count(r"job ov_allow: 2 runs active, max_concurrent_runs reached: "
                   r"run skipped \(\d+ skipped so far\)") >= 1,
           "allow: a firing past max_concurrent_runs is skipped and counted")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "allow: exit 0")


def test_overlap_keys_checked(tap, env):
    cfg = env.config("""
  { name = "k1"; plugin = "square"; mode = "thread"; max_concurrent_runs = 2; },
  { name = "k2"; plugin = "square"; mode = "thread"; timezone = "UTC"; },
  { name = "k3"; plugin = "square"; mode = "thread"; schedule = "0 3 * * *";
    timezone = "Mars/Olympus_Mons"; },
  { name = "k4"; plugin = "square"; mode = "thread"; schedule = "0 3 * * *";
    catchup = "twice"; retry_delay = "10s"; retry_max_delay = "5s"; }""")
    rc, out, err = run([JOBRUND, "-t", "-c", cfg])
    tap.eq(rc, 1, "-t: misapplied and bad scheduling keys are errors")
    # Line 7 holds k1; each error names the line of its key.
    for line, what in ((7, "job 'k1': max_concurrent_runs: applies to overlap = \"allow\" only"),
                       (8, "job 'k2': timezone: applies to cron schedules only"),
                       (10, "job 'k3': timezone: \"Mars/Olympus_Mons\" is not a time zone"),
                       (12, "job 'k4': catchup: \"twice\" is not a policy"),
                       (12, "job 'k4': retry_max_delay: 5s is less than retry_delay")):
        tap.ok("%s:%d: %s" % (cfg, line, what) in err, "-t: %s:%d: %s" % (
            os.path.basename(cfg), line, what), err)


def test_every_no_drift(tap, env):
    cfg = env.config("""
  { name = "beat"; plugin = "square"; mode = "thread"; inputs = [ 1 ];
    schedule = "@every 50ms"; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job beat: run 41 started"), "@every: 41 runs", d.log()[-3:])
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")
    t = starts(d, "beat")[:41]
    # Each start's offset from its slot on a 50 ms grid: late firings do
    # not push the later ones (absolute due times), so the offsets do not
    # grow.
    off = sorted(x - k * 0.05 for k, x in enumerate(t))
    median = off[len(off) // 2]
    drift = (t[-1] - 40 * 0.05) - median
    tap.diag("@every 50ms: run 41 is %.1f ms off the grid" % (drift * 1000))
    tap.ok(len(t) == 41 and abs(drift) < 0.1, "@every does not drift", drift)


# --------------------------------------------------------------------------
# Retries

def attempt_times(path):
    with open(path + ".times") as f:
        return [float(l) for l in f if l.strip()]


def test_retries_backoff(tap, env):
    c1 = os.path.join(env.dir, "count-thread")
    c2 = os.path.join(env.dir, "count-process")
    c3 = os.path.join(env.dir, "count-exhausted")
    c4 = os.path.join(env.dir, "count-timeout")
    cfg = env.config("""
  { name = "rt_thread"; plugin = "flaky"; mode = "thread"; inputs = [ "%s:2" ];
    retries = 3; retry_delay = "200ms"; retry_max_delay = "300ms"; },
  { name = "rt_crash"; plugin = "flaky"; mode = "process"; inputs = [ "%s:1:crash" ];
    retries = 2; retry_delay = "100ms"; },
  { name = "rt_exhausted"; plugin = "flaky"; mode = "thread"; inputs = [ "%s:5" ];
    retries = 1; retry_delay = "50ms"; },
  { name = "rt_timeout"; plugin = "flaky"; mode = "thread"; inputs = [ "%s:1:sleep" ];
    retries = 1; retry_delay = "50ms"; timeout = "200ms"; }""" % (c1, c2, c3, c4))
    rc, res, err = run_once(cfg)
    by = {r["job"]: r for r in res}
    tap.eq(rc, 3, "--once: a task failing after its retries fails the run")
    t = by.get("rt_thread", {})
    tap.eq((t.get("status"), t.get("attempt"), t.get("output")), ("ok", 3, "ok after 3"),
           "failed twice, then ok: the last attempt counts, attempt 3")
    tap.ok(re.search(r"job rt_thread run 1 task 0 .*: failed .*: retry 1 of 3 in 0\.2s", err)
           and re.search(r"job rt_thread run 1 task 0 .*: failed .*attempt 2\): retry 2 "
                         r"of 3 in 0\.3s", err),
           "each retry is logged, the delay doubled and capped by retry_max_delay", err)
    times = attempt_times(c1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    tap.ok(len(gaps) == 2 and gaps[0] >= 0.19 and gaps[1] >= 0.29,
           "the attempts are retry_delay, then retry_max_delay apart", gaps)
    c = by.get("rt_crash", {})
    tap.eq((c.get("status"), c.get("attempt")), ("ok", 2),
           "process mode: a crashed task is retried on a new worker")
    x = by.get("rt_exhausted", {})
    tap.eq((x.get("status"), x.get("attempt")), ("failed", 2),
           "retries exhausted: the last attempt's failure is the result")
    tap.eq(len(attempt_times(c3)), 2, "no attempt beyond retries")
    o = by.get("rt_timeout", {})
    tap.eq((o.get("status"), o.get("attempt")), ("ok", 2), "a timed-out task is retried")
    tap.ok(re.search(r"job rt_timeout run 1 task 0 .*: timeout .*: retry 1 of 1", err),
           "the timeout is logged with its retry", err)


def test_retry_cancelled(tap, env):
    c1 = os.path.join(env.dir, "count-cancel")
    cfg = env.config("""
  { name = "rt_wait"; plugin = "flaky"; mode = "thread"; inputs = [ "%s:9" ];
    retries = 5; retry_delay = "30s"; }""" % c1, extra="shutdown_grace = 1.0;\n")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job rt_wait run 1 task 0 .*: retry 1 of 5 in 30s"),
           "a retry is waiting", d.log()[-5:])
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "SIGTERM during a retry's wait: exit 0")
    tap.ok(time.monotonic() - t0 < 5, "at once, not after the retry delay")
    tap.ok(d.count(r"job rt_wait: run 1 task 0: retry cancelled") == 1 and
           d.count(r"job rt_wait: run 1 finished .*\(cancelled\)") == 1,
           "the retry is cancelled and the run ends with its last result", d.log()[-6:])


def run_once(cfg, *jobs):
    import json
    rc, out, err = run([JOBRUND, "-e", "-c", cfg, "--once"] + list(jobs))
    res = []
    for line in out.splitlines():
        try:
            res.append(json.loads(line))
        except ValueError:
            res.append({"unparsable": line})
    return rc, res, err


# --------------------------------------------------------------------------
# Cron: catch-up after downtime

def test_catchup(tap, env):
    cfg = env.config("""
  { name = "cu_once"; plugin = "square"; mode = "thread"; inputs = [ 3 ];
    schedule = "*/5 * * * *"; catchup = "once"; timezone = "Europe/Paris"; },
  { name = "cu_none"; plugin = "square"; mode = "thread"; inputs = [ 4 ];
    schedule = "*/5 * * * *"; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"2 jobs active"), "cron jobs start", d.log()[-5:])
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "first daemon stops")
    tap.eq(d.count(r"missed its run"), 0, "a first start misses nothing")
    db = os.path.join(env.state_dir, "history.db")
    con = sqlite3.connect(db)
    saved = dict(con.execute("SELECT job, last_fire FROM schedule"))
    tap.ok(set(saved) == {"cu_once", "cu_none"} and
           all(abs(v - time.time()) < 120 for v in saved.values()),
           "each cron job's last handled time is saved", saved)
    # Pretend jobrund was down for an hour: times fell due meanwhile.
    con.execute("UPDATE schedule SET last_fire = last_fire - 3600")
    con.commit()
    con.close()
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job cu_once run 1 task 0 input=3: ok output=9"),
           "catchup = once: the missed run runs once at start-up", d.log()[-8:])
    tap.ok(d.count(r"job cu_once: missed its run due at .* while jobrund was down: "
                   r"running it once now \(catchup = once\)") == 1, "and says so")
    tap.ok(d.count(r"job cu_none: missed its run due at .*\(catchup = none: not run\)") == 1,
           "catchup = none: the miss is logged", d.log()[-8:])
    tap.eq(d.count(r"job cu_once: run \d+ started \(catchup\)"), 1,
           "once, however many were missed")
    tap.eq(d.count(r"job cu_none: run \d+ started \(catchup\)"), 0,
           "catchup = none: not run")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "second daemon stops")
    con = sqlite3.connect(db)
    rows = con.execute("SELECT trigger, status FROM runs WHERE job = 'cu_once' "
                       "AND trigger = 'catchup'").fetchall()
    con.close()
    tap.eq(rows, [("catchup", "ok")], "the history records the catch-up run")


# --------------------------------------------------------------------------
# Reload

def test_reload_broken_then_changed_running_job(tap, env):
    # Run numbers go on across restarts too: a job name per daemon.
    body = """
  { name = "%s"; plugin = "sleep"; mode = "%s"; inputs = [ "%s" ];
    schedule = "@start"; overlap = "queue"; }"""
    for mode in ("thread", "process"):
        job = "rl_" + mode
        cfg = env.config(body % (job, mode, "1.5"))
        d = Daemon(env, cfg)
        tap.ok(d.wait_log(r"job %s: run 1 started" % job), "%s: the run is going" % mode)
        # A broken file changes nothing.
        env.config(body % (job, mode, "0.01") + """,
  { name = "rl_bad"; plugin = "sleep"; mode = "thread"; timezone = "UTC"; }""")
        d.signal(signal.SIGHUP)
        tap.ok(d.wait_log(r"reload of .* failed \(1 error\)"),
               "%s: a broken reload is refused" % mode, d.log()[-5:])
        tap.ok(d.count(cfg + r":\d+: job 'rl_bad': timezone") == 1,
               "%s: with its error as FILE:LINE" % mode)
        # A good one changes the running job: new inputs.
        env.config(body % (job, mode, "0.01"))
        d.signal(signal.SIGHUP)
        tap.ok(d.wait_log(r"reloaded .*: 1 job: 0 added, 1 changed, 0 removed, 0 unchanged"),
               "%s: the change is applied" % mode, d.log()[-5:])
        tap.ok(d.wait_log(r"job %s run 2 task 0 input=0\.01: ok" % job),
               "%s: the new definition runs (@start again, queued)" % mode, d.log()[-8:])
        lines = d.log()
        old = [i for i, l in enumerate(lines) if re.search(r"job %s run 1 task 0 input=1\.5: ok" % job, l)]
        new = [i for i, l in enumerate(lines) if re.search(r"job %s: run 2 started" % job, l)]
        tap.ok(old and new and old[0] < new[0],
               "%s: the running run finished under its old definition, first" % mode,
               lines[-10:])
        tap.eq(d.count(r"job %s: run 1 started" % job), 1,
               "%s: run numbers go on across the change" % mode)
        d.signal(signal.SIGTERM)
        tap.eq(d.wait_exit(), 0, "%s: exit 0" % mode)


def test_reload_keeps_unchanged(tap, env):
    jobs = """
  { name = "keep"; plugin = "square"; mode = "process"; inputs = [ 2 ];
    schedule = "@every 300ms"; settings = { }; },
  { name = "chg"; plugin = "square"; mode = "thread"; inputs = [ %d ];
    schedule = "@every 300ms"; }%s"""
    cfg = env.config(jobs % (1, ""))
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job keep run 3 task 0 input=2: ok"), "jobs run", d.log()[-5:])
    pid = re.findall(r"job keep run 3 task 0 input=2: ok output=4 \(process, pid (\d+)",
                     "\n".join(d.log()))
    env.config(jobs % (5, """,
  { name = "added"; plugin = "square"; mode = "thread"; inputs = [ 7 ]; }"""))
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"reloaded .*: 3 jobs: 1 added, 1 changed, 0 removed, 1 unchanged"),
           "the reload is a diff", d.log()[-5:])
    n = len(starts(d, "keep"))
    tap.ok(d.wait_log(r"job keep: run %d started" % (n + 3)), "the unchanged job goes on")
    tap.eq(d.count(r"job keep: run 1 started"), 1,
           "its run counter continues (no second run 1)")
    gaps = [b - a for a, b in zip(starts(d, "keep"), starts(d, "keep")[1:])]
    tap.ok(gaps and max(gaps) < 0.3 + 0.15 and min(gaps) > 0.3 - 0.15,
           "its cadence is kept across the reload", gaps)
    pids = set(re.findall(r"job keep run \d+ task 0 input=2: ok output=4 \(process, pid (\d+)",
                          "\n".join(d.log())))
    tap.ok(pid and pids == set(pid), "it keeps its worker", pids)
    tap.ok(d.wait_log(r"job chg run \d+ task 0 input=5: ok output=25"),
           "the changed job runs its new definition")
    tap.ok(d.wait_log(r"job added run 1 task 0 input=7: ok output=49"),
           "the added @start job runs")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")


def test_reload_removed_drains(tap, env):
    cfg = env.config("""
  { name = "gone"; plugin = "sleep"; mode = "process"; inputs = [ "1" ];
    schedule = "@start"; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job gone: run 1 started"), "the run is going")
    env.config("""
  { name = "other"; plugin = "square"; mode = "thread"; inputs = [ 1 ]; }""")
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"reloaded .*1 added, 0 changed, 1 removed"), "the job is removed",
           d.log()[-5:])
    tap.ok(d.wait_log(r"job gone run 1 task 0 input=1: ok"),
           "its running run drains: it finishes, not cancelled", d.log()[-5:])
    tap.ok(wait_for(lambda: not processes_matching("jobrund-worker: gone")),
           "and its worker goes after it")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")


def test_sighup_storm(tap, env):
    cfg = env.config("""
  { name = "st"; plugin = "square"; mode = "thread"; inputs = [ 1 ];
    schedule = "@every 100ms"; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job st: run 2 started"), "running")
    for _ in range(200):
        d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"reloaded "), "the storm is applied", d.log()[-5:])
    n = d.count(r"job st: run \d+ started")
    tap.ok(d.wait_log(r"job st: run \d+ started", n=n + 3), "and jobs go on")
    reloads = d.count(r"reloaded ")
    tap.ok(1 <= reloads <= 10, "200 SIGHUPs coalesce into a few reloads", reloads)
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")


def big_config(env, n, value, extra_job=""):
    jobs = ",\n".join(
        '  { name = "b%05d"; plugin = "square"; mode = "process"; inputs = [ %d ]; '
        'schedule = "@manual"; }' % (i, value) for i in range(n))
    return env.config(jobs + extra_job)


def test_reload_10000_jobs(tap, env):
    ticker = """,
  { name = "tick"; plugin = "square"; mode = "thread"; inputs = [ 1 ];
    schedule = "@every 50ms"; }"""
    cfg = big_config(env, 10000, 1, ticker)
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"10001 jobs active", timeout=120), "10,000 jobs load", d.log()[-5:])
    tap.ok(d.wait_log(r"job tick: run 5 started"), "the ticker runs")
    # The beat's own jitter on this machine, now, without a reload: a
    # loaded machine delays a sleeping process too.
    n = len(starts(d, "tick"))
    d.wait_log(r"job tick: run \d+ started", n=n + 40)
    base = max_gap(starts(d, "tick")[max(n - 1, 0):])
    tap.diag("ticks 50 ms apart, no reload: longest gap %.0f ms" % (base * 1000))
    bound = max(0.35, base + 0.2)
    for what, value, pattern in (
            ("unchanged", 1, r"0 added, 0 changed, 0 removed, 10001 unchanged"),
            ("all changed", 2, r"0 added, 10000 changed, 0 removed, 1 unchanged")):
        big_config(env, 10000, value, ticker)
        n = len(starts(d, "tick"))
        mark = len(d.log())
        d.signal(signal.SIGHUP)
        ok = d.wait_log(r"reloaded .*" + pattern, timeout=120)
        tap.ok(ok, "10,000 jobs, %s: reloaded" % what, d.log()[-5:])
        line = [l for l in d.log()[mark:] if "reloaded " in l]
        m = re.search(r"read in ([\d.]+) ms off the event loop, applied in ([\d.]+) ms",
                      line[0] if line else "")
        tap.ok(m and float(m.group(2)) < 200,
               "10,000 jobs, %s: applying holds the loop < 200 ms" % what,
               line)
        if m:
            tap.diag("10,000 jobs, %s: read in %s ms (loader thread), applied in %s ms"
                     % (what, m.group(1), m.group(2)))
        # The ticker keeps its 50 ms beat through the reload (and the
        # runtimes made after it): a stalled loop would leave a hole.
        d.wait_log(r"job tick: run \d+ started", n=n + 20)
        gap = max_gap(starts(d, "tick")[max(n - 1, 0):])
        tap.diag("10,000 jobs, %s: longest gap between ticks: %.0f ms" % (what, gap * 1000))
        tap.ok(gap < bound, "10,000 jobs, %s: the event loop keeps ticking" % what,
               (gap, bound))
    b = d.count(r"job b00042")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(timeout=120), 0, "exit 0")
    tap.eq(b, 0, "no @manual job ran")


main([test_overlap_skip, test_overlap_queue, test_overlap_replace, test_overlap_allow,
      test_overlap_keys_checked, test_every_no_drift, test_retries_backoff, test_retry_cancelled, test_catchup,
      test_reload_broken_then_changed_running_job, test_reload_keeps_unchanged,
      test_reload_removed_drains, test_sighup_storm, test_reload_10000_jobs])
