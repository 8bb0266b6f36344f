"""A job's `prestart`: its pool starts when the daemon takes the job up,
not at its first run, stays full (a worker that exits between runs is
replaced: at once when someone killed it), serves the runs, follows a
reload, and stops trying when workers cannot start, die idle in a loop,
or would take the descriptors the daemon needs.

Runs the real daemon and talks to it with the real jobrunctl.
"""

import json
import os
import re
import resource
import signal
import time

from jrtest import BUILDDIR, Daemon, main, run, wait_for

JOBRUNCTL = os.path.join(BUILDDIR, "jobrunctl")


def job(name, mode="process", extra="", workers=2):
    """A @manual job of 4 tasks: in process mode, each answers its
    worker's pid (the crash test plugin, which runs only in processes)."""
    plugin, inputs = (("crash", '"pid", "pid", "pid", "pid"') if mode == "process"
                      else ("square", "1, 2, 3, 4"))
    return ('{ name = "%s"; plugin = "%s"; mode = "%s"; workers = %d; '
            'schedule = "@manual"; inputs = [ %s ]; %s }'
            % (name, plugin, mode, workers, inputs, extra))


def ctl(env, *args):
    return run([JOBRUNCTL, "-s", env.socket] + list(args))


def workers(env, name):
    """jobrunctl --json workers NAME: its list, or None when it fails."""
    rc, out, err = ctl(env, "--json", "workers", name)
    return json.loads(out)["workers"] if rc == 0 else None


def full_and_idle(env, name, n=2):
    """NAME's pool has N workers, all idle; returns their pids."""
    ws = workers(env, name) or []
    ok = len(ws) == n and all(w["state"] == "idle" for w in ws)
    return sorted(w["pid"] for w in ws) if ok else None


def results(env, name):
    rc, out, err = ctl(env, "--json", "run", name, "--wait")
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()]


def suspended(tap, d, name, why, what):
    """Wait for the log to say that NAME's prestart was suspended, for
    WHY (a regular expression); WHAT names the check."""
    tap.ok(d.wait_log(r"job %s: prestart suspended until a run starts a "
                      r"worker: %s" % (name, why)), what, d.log()[-8:])


def start(tap, env, cfg):
    d = Daemon(env, cfg)
    tap.ok(d.wait_log("jobs? active") and wait_for(lambda: ctl(env, "version")[0] == 0),
           "the daemon is up", d.log()[-5:])
    return d


def test_process_pool_prestarted(tap, env):
    cfg = env.config(",\n".join([job("pre", extra="prestart = true;"),
                                 job("lazy"),
                                 job("off", extra="prestart = true; enabled = false;")]))
    d = start(tap, env, cfg)
    pids = wait_for(lambda: full_and_idle(env, "pre"))
    tap.ok(pids, "the prestarted job has its 2 workers, idle, before any run",
           workers(env, "pre"))
    # Every job is taken up at start-up before the loop serves anyone:
    # what the others have now, they had from the start.
    tap.eq(workers(env, "lazy"), [],
           "a job without prestart has none until its first run")
    tap.eq(workers(env, "off"), [], "nor has a disabled one")
    rc, out, err = ctl(env, "show", "pre")
    tap.ok(rc == 0 and "process, 2 workers, prestarted" in out,
           "jobrunctl show says the pool is prestarted", out)
    rc, out, err = ctl(env, "--json", "show", "pre")
    tap.ok(rc == 0 and json.loads(out)["definition"]["prestart"] is True and
           json.loads(ctl(env, "--json", "show", "lazy")[1])["definition"]
           ["prestart"] is False, "and so does its JSON", out)

    rc, res = results(env, "pre")
    served = sorted({int(r["output"]) for r in res})
    tap.ok(rc == 0 and len(res) == 4 and all(r["status"] == "ok" for r in res),
           "a run on the prestarted pool succeeds", res)
    tap.ok(pids and served and set(served) <= set(pids),
           "its tasks ran in the workers started before it", (pids, served))
    tap.eq(d.count(r"job pre: idle worker"), 0, "no worker was replaced")

    # Killed between runs: replaced, as supervisord would.
    victim = pids[0] if pids else 0
    if victim:
        os.kill(victim, signal.SIGKILL)
    again = wait_for(lambda: (lambda p: p if p and victim not in p else None)(
        full_and_idle(env, "pre")))
    tap.ok(again, "a worker killed between runs is replaced: 2 again, the "
           "killed one gone", workers(env, "pre"))
    tap.ok(d.wait_log(r"job pre: idle worker %d killed by SIGKILL: replacing "
                      r"it \(prestart\)" % victim),
           "the log says it was killed and is replaced", d.log()[-5:])
    rc, res = results(env, "pre")
    tap.ok(rc == 0 and again and {int(r["output"]) for r in res} <= set(again),
           "the next run uses the replacement pool", (again, res))
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")
    tap.ok(pids and again and not any(os.path.exists("/proc/%d" % p)
                                      for p in set(pids) | set(again)),
           "no prestarted worker outlives the daemon")


def test_reload_turns_it_on(tap, env):
    cfg = env.config(job("rl"))
    d = start(tap, env, cfg)
    tap.eq(workers(env, "rl"), [], "without prestart: no worker")
    env.config(job("rl", extra="prestart = true;"))
    d.signal(signal.SIGHUP)
    tap.ok(wait_for(lambda: full_and_idle(env, "rl")),
           "prestart = true by a reload: the pool starts", workers(env, "rl"))
    env.config(job("rl", extra="prestart = false;"))
    d.signal(signal.SIGHUP)
    tap.ok(wait_for(lambda: workers(env, "rl") == []),
           "and off again: the old pool's workers go, none replace them",
           workers(env, "rl"))
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_thread_pool_prestarted(tap, env):
    cfg = env.config(",\n".join([job("tpre", "thread", "prestart = true;"),
                                 job("tlazy", "thread")]))
    d = start(tap, env, cfg)
    tap.ok(wait_for(lambda: (lambda ws: len(ws) == 2 and
                             all(w["tid"] for w in ws))(workers(env, "tpre") or [])),
           "a prestarted thread pool has its 2 threads running before any run",
           workers(env, "tpre"))
    tap.eq(workers(env, "tlazy"), [],
           "a thread pool without prestart has started none")
    rc, res = results(env, "tpre")
    tap.ok(rc == 0 and len(res) == 4 and all(r["status"] == "ok" for r in res),
           "a run on it succeeds", res)
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def start_one_worker(tap, env, name, extra, why, tries):
    """Start the daemon with NAME, a prestarted job of 1 worker with
    EXTRA; wait for its prestart to be suspended for WHY, and check that
    it was after TRIES tries (log lines matching TRIES[0]: TRIES[1])."""
    d = start(tap, env, env.config(job(name, extra="prestart = true; " + extra,
                                       workers=1)))
    suspended(tap, d, name, why, "job %s: prestart is suspended, and the log "
              "says why" % name)
    tap.eq(d.count(tries[0]), tries[1], "job %s: after %d tries, not in a loop"
           % (name, tries[1]))
    return d


def test_worker_cannot_start(tap, env):
    # 4 descriptors: 0-3 are the worker's own, so opening the plugin fails.
    d = start_one_worker(tap, env, "nofd", "rlimits = { nofile = 4; };",
                         "worker could not start: cannot load",
                         (r"job nofd: worker \d+ cannot start", 1))
    rc, res = results(env, "nofd")
    tap.ok(rc == 3 and len(res) == 4 and
           all(r["status"] == "failed" and "worker could not start" in r["error"]
               for r in res),
           "the next run tries again and reports why its tasks failed", res)
    # The log reaches us through a pipe: let it catch up with the run.
    d.wait_log(r"job nofd: worker \d+ cannot start", n=2)
    tap.eq(d.count(r"job nofd: worker \d+ cannot start"), 2,
           "one more try, for the run, and still no loop")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_reload_resumes(tap, env):
    """Prestart suspended because workers could not start (their cwd was
    removed); the admin puts it back and reloads: prestart resumes."""
    work = os.path.join(env.dir, "work")
    os.mkdir(work)
    cfg = env.config(job("cw", extra='prestart = true; cwd = "%s";' % work,
                         workers=1))
    d = start(tap, env, cfg)
    pids = wait_for(lambda: full_and_idle(env, "cw", 1))
    tap.ok(pids and wait_for(lambda: age(pids[0]) > 1.5), "a worker, up for a while")
    os.rmdir(work)
    if pids:
        os.kill(pids[0], signal.SIGKILL)
    suspended(tap, d, "cw", "worker could not start: .*%s" % re.escape(work),
              "its replacement cannot enter the removed cwd: suspended")
    tap.eq(workers(env, "cw"), [], "no worker meanwhile")
    os.mkdir(work)
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"job cw: prestarting its workers again"),
           "a reload with the directory back resumes prestart", d.log()[-5:])
    tap.ok(wait_for(lambda: full_and_idle(env, "cw", 1)),
           "and the pool is full again", workers(env, "cw"))
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def age(pid):
    """Seconds since PID started (from /proc/PID/stat), or 0."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return up - start / os.sysconf("SC_CLK_TCK")


def test_kill_refills_at_once(tap, env):
    """jobrunctl kill of an idle pool that has been up a while is the
    admin's doing, not a crash loop: all 8 come back without the crash
    delay (which for 8 deaths would be 5 s)."""
    cfg = env.config(job("k8", extra="prestart = true;", workers=8))
    d = start(tap, env, cfg)
    pids = wait_for(lambda: full_and_idle(env, "k8", 8))
    tap.ok(pids and wait_for(lambda: min(age(p) for p in pids) > 1.5),
           "8 idle workers, up for over a second", workers(env, "k8"))
    rc, out, err = ctl(env, "kill", "k8", "-KILL")
    tap.eq(rc, 0, "jobrunctl kill k8 -KILL", )
    t0 = time.monotonic()
    again = wait_for(lambda: (lambda p: p if p and not set(p) & set(pids or [])
                              else None)(full_and_idle(env, "k8", 8)), timeout=3)
    tap.ok(again, "all 8 replaced within 3 s (%.2f s)" % (time.monotonic() - t0),
           workers(env, "k8"))
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_idle_crash_loop_suspends(tap, env):
    """Workers that start and then die with nothing to do are not
    replaced for ever: after 5 in a row, prestart is suspended."""
    d = start_one_worker(tap, env, "loop", "settings = { die_idle_ms = 20; };",
                         "5 workers in a row killed by SIGSEGV idle",
                         (r"job loop: idle worker \d+ killed by SIGSEGV", 5))
    tap.ok(wait_for(lambda: workers(env, "loop") == []),
           "and none is started again", workers(env, "loop"))
    tap.eq(d.count(r"job loop: idle worker \d+ killed by SIGSEGV"), 5,
           "still 5 once the pool is empty")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_descriptors_kept_for_work(tap, env):
    """Prestarting stops short of the descriptor limit: the daemon keeps
    enough for its clients and runs (each idle worker holds 3)."""
    cfg = env.config(",\n".join([job("many", extra="prestart = true;",
                                      workers=40),
                                  job("other", workers=1)]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    d = Daemon(env, cfg, preexec_fn=lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, (128, hard)))
    suspended(tap, d, "many", "too few descriptors left",
              "with 128 descriptors, prestarting 40 workers stops short, "
              "and says why")
    n = len(workers(env, "many") or [])
    tap.ok(1 <= n < 40, "some workers started, not all 40 (%d)" % n)
    rc, res = results(env, "other")
    tap.ok(rc == 0 and len(res) == 4 and all(r["status"] == "ok" for r in res),
           "another job's run still gets its worker and succeeds", res)
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


main([test_process_pool_prestarted, test_reload_turns_it_on,
      test_thread_pool_prestarted, test_worker_cannot_start,
      test_kill_refills_at_once, test_idle_crash_loop_suspends, test_reload_resumes,
      test_descriptors_kept_for_work])
