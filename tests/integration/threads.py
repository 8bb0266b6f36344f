"""Thread mode's executor as a user sees it: threads start only when a job
has work, a slow task does not hold up the tasks claimed behind it, and
each task's CPU time is plausible next to its wall time.

Runs the real jobrund (--once, and the daemon with jobrunctl) on
temporary configs.
"""

import datetime
import json
import os
import signal
import subprocess
import threading
import time

from jrtest import BUILDDIR, JOBRUND, Daemon, main, once, run, wait_for

JOBRUNCTL = os.path.join(BUILDDIR, "jobrunctl")


def threads_of(pid):
    try:
        return len(os.listdir("/proc/%d/task" % pid))
    except OSError:
        return None


def test_threads_start_on_demand(tap, env):
    cfg = env.config('{ name = "pool"; plugin = "square"; mode = "thread"; '
                     'workers = 4; inputs = [ 1, 2, 3, 4, 5, 6, 7, 8 ]; '
                     'schedule = "@every 1h"; }')
    d = Daemon(env, cfg)
    tap.ok(d.wait_log("1 job active"), "the daemon is up", d.log()[-5:])
    # Whatever else the daemon runs (history, ...), stable at rest.
    before = wait_for(lambda: threads_of(d.pid))
    time.sleep(0.3)  # a thread started by mistake has time to show
    at_rest = threads_of(d.pid)
    tap.ok(at_rest is not None and at_rest == before,
           "no thread comes and goes at rest", (before, at_rest))
    rc, out, err = run([JOBRUNCTL, "-s", env.socket, "run", "pool", "--wait"])
    tap.eq(rc, 0, "jobrunctl run --wait: the run succeeded")
    after = threads_of(d.pid)
    tap.ok(after is not None and at_rest is not None and
           1 <= after - at_rest <= 4,
           "the job's threads started with its first run, at most 4 of them",
           (at_rest, after))
    rc, out, err = run([JOBRUNCTL, "-s", env.socket, "--json", "workers", "pool"])
    tap.ok(rc == 0 and out.count("\"tid\"") == 4,
           "jobrunctl workers lists the 4 threads of the pool", (rc, out[:300], err))


def test_slow_task_does_not_hold_up_the_rest(tap, env):
    # Two threads claim chunks of the 41 tasks; whichever claims the slow
    # one would sit on the fast ones behind it, but the other thread
    # steals them once the queue is empty.
    inputs = ['"2.0"'] + ['"0.01"'] * 40
    cfg = env.config('{ name = "nap"; plugin = "sleep"; mode = "thread"; '
                     'workers = 2; inputs = [ %s ]; }' % ", ".join(inputs))
    t0 = time.monotonic()
    rc, res, err = once(cfg)
    took = time.monotonic() - t0
    tap.eq(rc, 0, "every task succeeded")
    tap.eq(sorted(r["index"] for r in res), list(range(41)),
           "each of the 41 tasks reported once")
    slow = [r for r in res if r["index"] == 0]
    fast = [r for r in res if r["index"] != 0]
    if not slow or len(fast) != 40:
        tap.ok(False, "every fast task ended well before the slow one", res[:3])
        return

    def ended(r):
        # "started" has millisecond precision: compare with that slack.
        when = datetime.datetime.strptime(r["started"], "%Y-%m-%dT%H:%M:%S.%fZ")
        return when.timestamp() + r["wall_s"]
    late = [r["index"] for r in fast if ended(r) > ended(slow[0]) - 0.5]
    tap.eq(late, [], "every fast task ended well before the slow one")
    tap.ok(took < 2.0 + 0.4 * 40 / 2, "the run took about the slow task's time",
           took)


def test_results_not_held_behind_a_long_task(tap, env):
    # One thread claims a chunk of tasks with the slow one fourth; the
    # results of the three before it must come out while it runs, not
    # after it.
    inputs = ['"0.0001"'] * 3 + ['"3"'] + ['"0.0001"'] * 60
    cfg = env.config('{ name = "nap"; plugin = "sleep"; mode = "thread"; '
                     'workers = 1; inputs = [ %s ]; }' % ", ".join(inputs))
    p = subprocess.Popen([JOBRUND, "-c", cfg, "--once"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    t0 = time.monotonic()
    seen = []

    def read():
        for line in p.stdout:
            seen.append((time.monotonic() - t0, json.loads(line)))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    got = wait_for(lambda: len(seen) >= 3, timeout=2.5)
    early = [s for s in seen if s[0] < 2.5]
    tap.ok(got and len(early) >= 3 and
           all(r["input"] == "0.0001" for _, r in early),
           "the three fast results came out while the slow task ran",
           [(round(t, 3), r["input"]) for t, r in seen])
    rc = p.wait(30)
    reader.join(5)
    tap.ok(rc == 0 and len(seen) == 64, "then the rest, and --once exits 0",
           (rc, len(seen)))


def test_cancel_a_big_run(tap, env):
    # SIGINT cancels every task at once: 100,000 queued and claimed tasks
    # end `cancelled` in one pass, not one search of the queue per task.
    n = 100000
    cfg = env.config('{ name = "many"; plugin = "sleep"; mode = "thread"; '
                     'workers = 4; inputs = [ %s ]; }'
                     % ", ".join(['"0.001"'] * n))
    p = subprocess.Popen([JOBRUND, "-c", cfg, "--once"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    first = p.stdout.readline()
    p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.read()),
                              daemon=True)
    reader.start()
    reader.join(60)
    if reader.is_alive():
        p.kill()
        reader.join(10)
    p.wait(10)
    took = time.monotonic() - t0
    res = [json.loads(l) for l in (first + "".join(out)).splitlines() if l]
    cancelled = sum(1 for r in res if r["status"] == "cancelled")
    tap.ok(p.returncode == 3 and took < 10, "SIGINT: --once exits 3 within "
           "seconds", (p.returncode, round(took, 2)))
    tap.ok(len(res) == n and cancelled > n // 2,
           "every task reported, most of them cancelled", (len(res), cancelled))


def test_cpu_time_within_wall_time(tap, env):
    cfg = env.config(",\n".join([
        '{ name = "spin"; plugin = "cpu"; mode = "thread"; workers = 1; '
        'inputs = [ "400000000" ]; }',
        '{ name = "nap"; plugin = "sleep"; mode = "thread"; workers = 1; '
        'inputs = [ "0.2" ]; }',
        '{ name = "tiny"; plugin = "square"; mode = "thread"; workers = 2; '
        'inputs = [ %s ]; }' % ", ".join(str(i) for i in range(2000))]))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "the three jobs succeeded")
    by = {}
    for r in res:
        by.setdefault(r["job"], []).append(r)
    spin = by.get("spin", [{}])[0]
    nap = by.get("nap", [{}])[0]
    tap.ok(spin.get("cpu_s", 0) > 0.5 * spin.get("wall_s", 1),
           "a CPU-bound task is charged its CPU time", spin)
    tap.ok(nap.get("wall_s", 0) >= 0.2 and nap.get("cpu_s", 1) < 0.05,
           "a sleeping task is charged almost none", nap)
    tap.eq(len(by.get("tiny", [])), 2000, "2,000 short tasks, each reported")


if __name__ == "__main__":
    main([test_threads_start_on_demand, test_slow_task_does_not_hold_up_the_rest,
          test_results_not_held_behind_a_long_task, test_cancel_a_big_run,
          test_cpu_time_within_wall_time])
