"""Process mode's batches (issue 8): tasks travel to workers in batches
over the socketpair, each claimed in the memory block the worker shares
with jobrund before it starts, so that the daemon can take back those not
started.  Through the real daemon (--once), these check that every task
is run and recorded exactly once with its own result; that a slow task
does not hold up the fast ones behind it; that a crash or a timeout in the
middle of a batch ends exactly that task while the rest of the batch runs
elsewhere, once; that what a task prints stays with that task; and that
max_tasks_per_worker still holds.  A plugin that scribbles on the shared
block (crash.c's scribble: modes) gets its worker killed and the run
ends, with or without a timeout; and the task a worker still runs after
jobrund granted past ids it took back is the one that times out.

Nothing here sleeps blindly: each run is bounded by jrtest.TIMEOUT, and
orders are read from the results jobrund prints as tasks finish.
"""

import ctypes
import json
import os
import re
import signal
import subprocess

from jrtest import BUILDDIR, JOBRUND, TIMEOUT, Daemon, main, run, wait_for

JOBRUNCTL = os.path.join(BUILDDIR, "jobrunctl")


def job(name, plugin, inputs, extra="", workers=2):
    return ('{ name = "%s"; plugin = "%s"; mode = "process"; workers = %d; '
            'inputs = ( %s ); %s }' % (name, plugin, workers,
                                       ", ".join('"%s"' % i for i in inputs), extra))


def run_once(cfg, *jobs, timeout=TIMEOUT * 2, env=None):
    """jobrund -e --once: (status, results in completion order, stderr)."""
    p = subprocess.Popen([JOBRUND, "-e", "-c", cfg, "--once"] + list(jobs),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, [json.loads(l) for l in out.splitlines()], err


def by_index(res):
    """{index: [results]}: more than one result for an index is a bug."""
    seen = {}
    for r in res:
        seen.setdefault(r["index"], []).append(r)
    return seen


def exactly_once(tap, res, n, what):
    seen = by_index(res)
    twice = sorted(i for i, rs in seen.items() if len(rs) > 1)
    missing = sorted(set(range(n)) - set(seen))
    tap.ok(not twice and not missing and len(res) == n,
           "%s: each of %d tasks reported exactly once" % (what, n),
           {"twice": twice[:10], "missing": missing[:10], "results": len(res)})
    return seen


def test_many_fast_tasks(tap, env):
    n = 20000
    cfg = env.config(job("fast", "square", range(n)))
    rc, res, err = run_once(cfg)
    tap.eq(rc, 0, "fast: every task succeeds")
    seen = exactly_once(tap, res, n, "fast")
    wrong = [i for i, rs in seen.items() if rs[0].get("output") != str(i * i)]
    tap.ok(not wrong, "fast: each output is its own input's square", wrong[:10])
    pids = {r["pid"] for r in res}
    tap.ok(1 <= len(pids) <= 2 and all(p > 0 for p in pids),
           "fast: run by the job's workers (%d of them)" % len(pids), pids)
    bad = [r for r in res if not (r.get("started") and r.get("wall_s", -1) >= 0 and
                                  r.get("cpu_s", -1) >= 0)]
    tap.ok(not bad, "fast: each result has its own start, wall and CPU time", bad[:3])
    tap.ok("completed twice" not in err, "fast: nothing completed twice", err[-500:])


def slow_task_last(tap, env, name, inputs, slow):
    """Run the sleep INPUTS on 2 workers, INPUTS[SLOW] the long one: each
    task once, the long one last, and the tasks after it run by the other
    worker.  Returns the pids of the tasks after it, less the long one's."""
    cfg = env.config(job(name, "sleep", inputs))
    rc, res, err = run_once(cfg)
    tap.eq(rc, 0, "%s: every task succeeds" % name)
    exactly_once(tap, res, len(inputs), name)
    tap.ok(res and res[-1]["index"] == slow,
           "%s: the fast tasks all finish while the slow one runs" % name,
           [r["index"] for r in res[-5:]])
    long_pid = {r["pid"] for r in res if r["index"] == slow}
    after = {r["pid"] for r in res if r["index"] > slow}
    return after, after - long_pid if long_pid else set()


def test_slow_task_does_not_hold_up_others(tap, env):
    # Fast tasks first, so that batches have grown when the slow one
    # comes: the tasks behind it in its worker's batch must be taken
    # back and run by the other worker while it sleeps.
    after, others = slow_task_last(tap, env, "slow",
                                   ["0"] * 300 + ["3"] + ["0"] * 600, 300)
    tap.ok(others, "slow: the other worker ran tasks after it", after)


def test_held_task_not_stuck_behind_slow_one(tap, env):
    # Tasks too slow to batch go one at a time, but a worker holds a
    # second to start on without a round trip: the one held by the worker
    # stuck in the 3 s task must be taken back and run by the other.
    after, others = slow_task_last(tap, env, "held", ["3"] + ["0.2"] * 4, 0)
    tap.ok(others and others == after,
           "held: the other worker ran every short task", after)


def test_crash_mid_batch(tap, env):
    # One worker, so that the tasks after each crash in its batches can
    # only run once they have gone back to the queue, on its successor.
    n, bad = 3000, (1000, 2000, 2500)
    inputs = ["t%d" % i for i in range(n)]
    for i in bad:
        inputs[i] = "segv"
    cfg = env.config(job("crashb", "crash", inputs, workers=1))
    rc, res, err = run_once(cfg)
    tap.eq(rc, 3, "crash: the run fails")
    seen = exactly_once(tap, res, n, "crash")
    crashed = sorted((r for r in res if r["status"] != "ok"), key=lambda r: r["index"])
    tap.ok([r["index"] for r in crashed] == list(bad) and
           all(r["status"] == "crashed" and r.get("signal_name") == "SIGSEGV"
               for r in crashed),
           "crash: exactly the tasks that crashed are recorded crashed, with the signal",
           crashed[:3])
    wrong = [i for i, rs in seen.items() if i not in bad and rs[0].get("output") != inputs[i]]
    tap.ok(not wrong, "crash: every other task ran and has its own output", wrong[:10])
    tap.ok("completed twice" not in err, "crash: nothing completed twice")
    tap.ok(re.search(r"job crashb: worker \d+: \d+ tasks? it had not started go back to "
                     r"the queue", err), "crash: a worker crashed in the middle of a batch, "
           "whose unstarted tasks went back to the queue", err[-800:])


def test_crash_runs_nothing_twice(tap, env):
    # Tasks with a side effect: each appends its input to a file, so a
    # task run twice would show even if it were reported once.  The
    # crashing one kills its worker with SIGSEGV after its line.
    log = os.path.join(env.dir, "ran.log")
    n, bad = 60, 30
    inputs = ["x%d" % i for i in range(n)]
    inputs[bad] = "crash"
    cmd = ('echo $0 >> %s; case $0 in crash) kill -SEGV $PPID; sleep 5;; esac; echo $0'
           % log)
    cfg = env.config(job("side", "exec", inputs,
                         'settings = { command = ["sh", "-c", "%s"]; };' % cmd))
    rc, res, err = run_once(cfg)
    exactly_once(tap, res, n, "side effects")
    with open(log) as f:
        lines = f.read().split()
    tap.eq(sorted(lines), sorted(inputs), "side effects: each task ran exactly once")
    st = by_index(res).get(bad, [{}])[0]
    tap.ok(st.get("status") == "crashed" and st.get("signal_name") == "SIGSEGV",
           "side effects: the task whose worker died is crashed", st)
    tap.eq(sum(r["status"] == "ok" for r in res), n - 1, "side effects: the others are ok")


def test_timeout_mid_batch(tap, env):
    n, bad = 2000, 1000
    inputs = ["t%d" % i for i in range(n)]
    inputs[bad] = "hang"        # ignores SIGTERM: only SIGKILL ends it
    # One worker: the tasks behind the hung one in its batch can only
    # run once its deadline has taken them back.
    cfg = env.config(job("tmo", "crash", inputs, 'timeout = "1s"; kill_grace = "300ms";',
                         workers=1))
    rc, res, err = run_once(cfg)
    tap.eq(rc, 3, "timeout: the run fails")
    seen = exactly_once(tap, res, n, "timeout")
    failed = [r for r in res if r["status"] != "ok"]
    tap.ok(len(failed) == 1 and failed[0]["index"] == bad and
           failed[0]["status"] == "timeout" and failed[0].get("wall_s", 0) >= 1.0,
           "timeout: exactly the task that hung times out, after its timeout", failed[:3])
    wrong = [i for i, rs in seen.items() if i != bad and rs[0].get("output") != inputs[i]]
    tap.ok(not wrong, "timeout: every other task ran once with its output", wrong[:10])
    tap.ok("timed out after 1s" in err, "timeout: logged", err[-500:])
    tap.ok(re.search(r"job tmo: worker \d+: \d+ tasks? it had not started go to other "
                     r"workers", err), "timeout: it timed out in the middle of a batch, "
           "whose unstarted tasks went to other workers", err[-800:])


# What each printing input of crash.c writes, line by line.
PRINTED = {
    "print": ["noise from the plugin on stdout", "noise from the plugin on stderr"],
    "print:thread": ["noise from a plugin thread"],
    "print:child": ["noise from a plugin's child"],
}


def io_uring_usable():
    """Whether this kernel sets up the ring outwatch.c asks for (Linux 6.1
    or later, io_uring neither disabled nor filtered out)."""
    libc = ctypes.CDLL(None, use_errno=True)
    params = (ctypes.c_uint32 * 30)()   # struct io_uring_params, 120 bytes
    # flags: SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG
    params[2] = (1 << 12) | (1 << 13) | (1 << 9)
    # io_uring_setup's generic number; where it differs (alpha, MIPS) the
    # call fails and the ring row is skipped.
    fd = libc.syscall(425, 2, params)
    if fd < 0:
        return False
    os.close(fd)
    return True


def test_output_stays_with_its_task(tap, env):
    # The worker sees a task's writes through an io_uring watch on its
    # pipe, or with JOBRUND_WORKER_FIONREAD set, a FIONREAD per task
    # (outwatch.c): both must keep output with its task, whether the
    # task's own thread, another thread or a child wrote it.  crash.c's
    # "uring" says which one the worker uses.
    n = 600
    printing = sorted(PRINTED)
    inputs = [printing[i // 7 % 3] if i % 7 == 3 else "t%d" % i for i in range(n)]
    inputs[0] = "uring"
    cfg = env.config(job("outb", "crash", inputs))
    ring = io_uring_usable()
    for how, extra in (("io_uring", {}), ("FIONREAD", {"JOBRUND_WORKER_FIONREAD": "1"})):
        what = "output (%s)" % how
        rc, res, err = run_once(cfg, env=dict(os.environ, **extra))
        tap.ok(rc == 0, "%s: every task succeeds" % what, err[-500:])
        seen = exactly_once(tap, res, n, what)
        used = seen.get(0, [{}])[0].get("output")
        if how == "FIONREAD":
            tap.eq(used, "no", "%s: the worker has no ring" % what)
        elif ring:
            tap.eq(used, "yes", "%s: the worker watches through a ring, as "
                   "this kernel allows" % what)
        else:
            tap.skip("%s: the worker watches through a ring" % what,
                     "this kernel refuses the ring outwatch.c asks for")
        bad = []
        for i, rs in seen.items():
            wo = rs[0].get("worker_output")
            want = PRINTED.get(inputs[i])
            if want is None:
                if wo is not None:
                    bad.append((i, inputs[i], wo))
            elif wo is None or sorted(wo.splitlines()) != sorted(want):
                bad.append((i, inputs[i], wo))
        tap.ok(not bad, "%s: what each task prints, from any thread or child, "
               "is kept with it, and only with it" % what, bad[:5])


def test_max_tasks_per_worker(tap, env):
    n = 1000
    cfg = env.config(job("maxt", "square", range(n), "max_tasks_per_worker = 100;"))
    rc, res, err = run_once(cfg)
    tap.eq(rc, 0, "max_tasks: every task succeeds")
    exactly_once(tap, res, n, "max_tasks")
    per_pid = {}
    for r in res:
        per_pid[r["pid"]] = per_pid.get(r["pid"], 0) + 1
    tap.ok(per_pid and max(per_pid.values()) <= 100 and len(per_pid) >= 10,
           "max_tasks: no worker runs more than 100 tasks (%d workers)" % len(per_pid),
           sorted(per_pid.values()))


def test_scribbled_block(tap, env):
    # A plugin's wild write on the shared block: the worker drops the
    # tasks it holds, or hides what it runs, and then idles or hangs.
    # Each must get its worker killed and the run must end, every task
    # reported once, with a timeout and without one.  (Before: the runs
    # hung for ever.)
    cases = [("gen", 'timeout = "1s";'), ("skip", 'timeout = "1s";'),
             ("limit", ""), ("skip", ""), ("gen", "")]
    for n, (how, extra) in enumerate(cases):
        what = "scribble:%s%s" % (how, " with a timeout" if extra else "")
        inputs = ["t%d" % i for i in range(300)] + ["scribble:" + how] + \
                 ["u%d" % i for i in range(100)]
        cfg = env.config(job("scr%d" % n, "crash", inputs, extra + ' kill_grace = "300ms";',
                             workers=1), name="scr%d.conf" % n)
        rc, res, err = run_once(cfg, timeout=TIMEOUT / 2)
        tap.eq(rc, 3, "%s: the run ends, and fails" % what)
        exactly_once(tap, res, len(inputs), what)
        tap.ok(re.search(r"shared state with jobrund is corrupt: stopping it|"
                         r"sent a result for task \d+ it was not running: stopping it",
                         err), "%s: the worker is found out and killed" % what, err[-800:])


def test_running_task_after_skipped_ids(tap, env):
    # Two runs that overlap.  In the first, a task hides what it runs
    # (as a worker between its claim and saying so would), so jobrund
    # takes back every task behind it and, when the second run comes,
    # grants that worker more past the ids taken back while the hidden
    # task still runs.  Then it shows itself and hangs: it must be the
    # one that times out (before: recorded "crashed ... result was lost"
    # by an "idle worker"), and then cancel must still reach a task
    # running so.
    inputs = ["t%d" % i for i in range(200)] + ["scribble:hide"] + \
             ["u%d" % i for i in range(200)]
    cfg = env.config(job("hide", "crash", inputs, 'schedule = "@manual"; overlap = "allow"; '
                         'timeout = "3s"; kill_grace = "300ms";'))
    d = Daemon(env, cfg)
    tap.ok(wait_for(lambda: os.path.exists(env.socket)), "skipped ids: daemon up")
    ctl = [JOBRUNCTL, "-s", env.socket]
    tap.eq(run(ctl + ["run", "hide"])[0], 0, "skipped ids: first run started")
    # All the tasks after it done elsewhere: taken back, every one.  (Those
    # before it may wait in its worker's spool: not looked for.)
    tap.ok(d.wait_log(r"job hide run 1 task \d+ input=u\d+: ok", 200),
           "skipped ids: the tasks after it ran elsewhere", "\n".join(d.log()[-20:]))
    tap.eq(run(ctl + ["run", "hide"])[0], 0, "skipped ids: second run started")
    tap.ok(d.wait_log(r"job hide run 1 task 200 input=scribble:hide: "),
           "skipped ids: the hidden task is recorded", "\n".join(d.log()[-20:]))
    line = [l for l in d.log() if "run 1 task 200 input=scribble:hide:" in l]
    tap.ok(line and "scribble:hide: timeout" in line[0] and "SIGTERM" in line[0],
           "skipped ids: it timed out, its worker killed by SIGTERM",
           "\n".join(l for l in d.log() if not re.search(r"input=[tu]\d", l)))
    tap.ok(not d.count(r"idle worker|result was lost"),
           "skipped ids: no worker taken for idle, no result lost",
           [l for l in d.log() if "idle worker" in l or "was lost" in l])
    tap.ok(d.wait_log(r"job hide: run 2 finished"), "skipped ids: the second run ends")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "skipped ids: the daemon exits cleanly")


main([test_many_fast_tasks, test_slow_task_does_not_hold_up_others,
      test_held_task_not_stuck_behind_slow_one, test_crash_mid_batch,
      test_crash_runs_nothing_twice, test_timeout_mid_batch, test_output_stays_with_its_task,
      test_max_tasks_per_worker, test_scribbled_block, test_running_task_after_skipped_ids])
