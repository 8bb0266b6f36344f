"""The worker factory: process-mode workers forked from a jobrund-worker the
daemon started once, not exec'd one by one.  A forked worker must be what
an exec'd one is (the daemon's child, its own process group, its name in
ps, its tags, its job's environment); the daemon must get by without the
factory (turned off, killed, hung, a job whose environment the dynamic
loader must see) and take it down with it.

Runs the real daemon and talks to it with the real jobrunctl.
"""

import json
import os
import resource
import signal
import stat
import time

from jrtest import (BUILDDIR, JOBRUND, Daemon, FACTORY_TITLE, children_of, cmdline, factory_of,
                    main, run, wait_for, workers_of)

JOBRUNCTL = os.path.join(BUILDDIR, "jobrunctl")
WORKER = os.path.join(BUILDDIR, "jobrund-worker")


def job(name, inputs=('"pid"', '"pid"'), extra=""):
    """A @manual process-mode job of the crash test plugin, whose tasks
    answer what they are asked about their worker ("pid", "env:NAME").
    Each worker serves one task, so every run starts its own."""
    return ('{ name = "%s"; plugin = "crash"; mode = "process"; workers = 2; '
            'schedule = "@manual"; max_tasks_per_worker = 1; inputs = [ %s ]; %s }'
            % (name, ", ".join(inputs), extra))


def env_group(**variables):
    """A job's env setting with VARIABLES and the exec-time variables of
    this environment (a sanitizer build's ASAN_OPTIONS...), which the
    factory was started with: without them the job's workers would be
    exec'd, not forked."""
    for name, value in os.environ.items():
        if name.startswith(("LD_", "MALLOC_")) or name == "GLIBC_TUNABLES" or \
                name.endswith("SAN_OPTIONS"):
            variables.setdefault(name, value)
    return "env = { %s };" % " ".join(
        '%s = "%s";' % (k, v.replace("\\", "\\\\").replace('"', '\\"'))
        for k, v in variables.items())


def config(env, jobs, extra=""):
    """A config of JOBS logging at debug level, where each worker's start
    is logged with how it started."""
    path = env.config(jobs, extra=extra)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace('log_level = "info";', 'log_level = "debug";'))
    return path


def ctl(env, *args):
    return run([JOBRUNCTL, "-s", env.socket] + list(args))


def results(env, name):
    rc, out, err = ctl(env, "--json", "run", name, "--wait")
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()]


def outputs(env, name):
    rc, res = results(env, name)
    if rc != 0 or not all(r["status"] == "ok" for r in res):
        return None
    return [r["output"] for r in sorted(res, key=lambda r: r["index"])]


def start(tap, env, cfg):
    d = Daemon(env, cfg)
    tap.ok(d.wait_log("jobs? active") and wait_for(lambda: ctl(env, "version")[0] == 0),
           "the daemon is up", d.log()[-5:])
    return d


def stat_of(pid):
    """(state, ppid, pgid) of PID from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return rest[0], int(rest[1]), int(rest[2])


def tags(pid):
    """The JOBRUND_* variables /proc/PID/environ shows."""
    with open("/proc/%d/environ" % pid, "rb") as f:
        env = f.read().split(b"\0")
    return dict(v.decode().split("=", 1) for v in env if v.startswith(b"JOBRUND_"))


def forked_and_execd(d, name, want=None):
    """How many of NAME's workers the log says were forked, and exec'd;
    given WANT, waits (bounded) for the log, which reaches us through a
    pipe, to say that many."""
    def counts():
        return (d.count(r"job %s: started worker \d+ \(forked by the worker factory\)"
                        % name),
                d.count(r"job %s: started worker \d+ \(exec'd\)" % name))
    if want is not None:
        wait_for(lambda: counts() == want, timeout=5)
    return counts()


def test_forked_workers_are_as_execd(tap, env):
    cfg = config(env, job("forked", ('"pid"', '"pid"', '"env:FOO"', '"env:JOBRUND_JOB"'),
                         env_group(FOO="bar") + ' prestart = true;'))
    d = start(tap, env, cfg)
    fac = wait_for(lambda: factory_of(d.pid))
    tap.ok(fac, "the daemon has a worker factory, its child, named %r in ps"
           % FACTORY_TITLE, [cmdline(c) for c in children_of(d.pid)])
    tap.ok(d.wait_log(r"worker factory %d started" % (fac or 0)), "and says so")
    tap.ok(wait_for(lambda: len(workers_of(d.pid)) == 2), "the prestarted pool is up")
    pids = workers_of(d.pid)
    tap.eq(forked_and_execd(d, "forked", (2, 0)), (2, 0), "both workers were forked by it")
    for pid in pids:
        state, ppid, pgid = stat_of(pid)
        tap.eq((ppid, pgid), (d.pid, pid),
               "worker %d: the daemon's child, leading its own process group" % pid)
        tap.eq(cmdline(pid), "jobrund-worker: forked", "worker %d: named for ps and "
               "pkill -f" % pid)
        with open("/proc/%d/comm" % pid) as f:
            tap.eq(f.read().strip(), "jobrund-worker", "worker %d: comm" % pid)
        t = tags(pid)
        tap.eq(t.get("JOBRUND_JOB"), "forked", "worker %d: /proc environ has its "
               "job tag" % pid, )
        tap.ok(t.get("JOBRUND_WORKER", "").startswith("%d." % d.pid),
               "worker %d: and its worker tag" % pid, t)
    out = outputs(env, "forked")
    tap.ok(out and set(out[:2]) <= {str(p) for p in pids},
           "the run is served by them", out)
    tap.eq(out[2:] if out else None, ["bar", "forked"],
           "a task sees the job's environment and its tag")
    with open("/proc/%d/environ" % fac, "rb") as f:
        fac_env = f.read()
    tap.ok(b"JOBRUND_WORKER=\0" in fac_env, "the factory itself carries no worker tag")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")
    tap.ok(wait_for(lambda: not os.path.exists("/proc/%d" % fac)), "the factory is gone too")


def test_factory_killed(tap, env):
    cfg = config(env, job("after"))
    d = start(tap, env, cfg)
    fac = wait_for(lambda: factory_of(d.pid))
    os.kill(fac, signal.SIGKILL)
    killed = time.monotonic()
    tap.ok(d.wait_log(r"worker factory %d: killed by signal 9 \(KILL\); workers "
                      r"are started with posix_spawn until it is restarted" % fac),
           "a killed factory is noticed and said", d.log()[-5:])
    tap.ok(wait_for(lambda: factory_of(d.pid) is None and
                    not [p for p in children_of(d.pid, "Z")]),
           "and reaped: no zombie")
    tap.ok(outputs(env, "after"), "the next run still gets its workers")
    tap.eq(forked_and_execd(d, "after", (0, 2)), (0, 2), "exec'd")
    # An unchanged reload does not restart it: a reload storm must not
    # restart (or wait for) a factory again and again.
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log("reloaded"), "reloaded")
    tap.eq(factory_of(d.pid), None, "an unchanged reload within the 5 s back-off "
           "leaves it down")

    def forked_again():
        return outputs(env, "after") and forked_and_execd(d, "after")[0] > 0

    tap.ok(wait_for(forked_again, timeout=30, interval=0.5),
           "runs fork their workers again, from a new factory started for them")
    tap.ok(time.monotonic() - killed >= 4.9, "not before the 5 s back-off")
    new = factory_of(d.pid)
    tap.ok(new and new != fac, "the new factory runs", new)
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_reload_takes_new_limits(tap, env):
    """A fork inherits the factory's limits, an exec the daemon's: after
    prlimit on the running daemon, a reload gives it a new factory."""
    cfg = config(env, job("limits", ('"rlimit:nofile"', '"pid"')))
    d = start(tap, env, cfg)
    fac = wait_for(lambda: factory_of(d.pid))
    soft, hard = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
    want = min(soft, hard, 1000) - 1
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log("reloaded"), "reloaded")
    tap.eq(factory_of(d.pid), fac, "an unchanged reload keeps the factory")
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (want, hard))
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log("reloaded", n=2), "reloaded again")
    new = wait_for(lambda: factory_of(d.pid) not in (None, fac) and factory_of(d.pid))
    tap.ok(new, "after prlimit on the daemon, a reload starts a new factory")
    out = outputs(env, "limits")
    tap.eq(out[0] if out else None, str(want), "whose workers have the new limit")
    tap.eq(forked_and_execd(d, "limits", (2, 0)), (2, 0), "(forked)")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_factory_off(tap, env):
    cfg = config(env, job("plain"), extra='worker_factory = false;\n')
    d = start(tap, env, cfg)
    tap.ok(outputs(env, "plain"), "worker_factory = false: runs get workers")
    tap.eq(forked_and_execd(d, "plain", (0, 2)), (0, 2), "exec'd")
    tap.eq(factory_of(d.pid), None, "and no factory runs")
    # Turned on by a reload, off by the next.
    config(env, job("plain"))
    d.signal(signal.SIGHUP)
    tap.ok(wait_for(lambda: factory_of(d.pid)), "a reload with it on starts the factory")
    tap.ok(outputs(env, "plain") and forked_and_execd(d, "plain", (2, 2)) == (2, 2),
           "and runs fork from it")
    config(env, job("plain"), extra='worker_factory = false;\n')
    d.signal(signal.SIGHUP)
    tap.ok(wait_for(lambda: factory_of(d.pid) is None and d.count("reloaded") >= 2),
           "a reload with it off stops it")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_only_with_process_jobs(tap, env):
    """A config without process-mode jobs has no factory to keep: it
    comes with the first one."""
    threads = ('{ name = "t"; plugin = "square"; mode = "thread"; '
               'schedule = "@manual"; inputs = [ 1 ]; }')
    cfg = config(env, ",\n".join([threads, job("off", extra="enabled = false;")]))
    d = start(tap, env, cfg)
    tap.eq(factory_of(d.pid), None, "thread-mode jobs (and a disabled process-mode "
           "one): no factory")
    config(env, ",\n".join([threads, job("on")]))
    d.signal(signal.SIGHUP)
    tap.ok(wait_for(lambda: factory_of(d.pid)),
           "a reload that brings a process-mode job starts it")
    tap.ok(outputs(env, "on") and forked_and_execd(d, "on", (2, 0)) == (2, 0),
           "and the job's workers are forked")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_environment(tap, env):
    """What only exec reads (LD_*, MALLOC_*, GLIBC_TUNABLES) must be the
    factory's for a worker to be forked; and nothing of the daemon's
    environment but those reaches a forked worker of a job with env."""
    cfg = config(env, ",\n".join([
        job("loader", ('"env:LD_BIND_NOW"', '"pid"'), 'env = { LD_BIND_NOW = "1"; };'),
        job("inherit", ('"env:JR_TEST_SECRET"', '"pid"')),
        job("nomalloc", ('"env:MALLOC_ARENA_MAX"', '"pid"'), 'env = { FOO = "bar"; };')]))
    os.environ["JR_TEST_SECRET"] = "hunter2"
    os.environ["MALLOC_ARENA_MAX"] = "4"
    try:
        d = start(tap, env, cfg)
    finally:
        del os.environ["JR_TEST_SECRET"]
        del os.environ["MALLOC_ARENA_MAX"]
    out = outputs(env, "loader")
    tap.ok(out and out[0] == "1", "a job setting LD_BIND_NOW runs and sees it", out)
    tap.eq(forked_and_execd(d, "loader", (0, 2)), (0, 2), "its workers were exec'd, not forked")
    out = outputs(env, "nomalloc")
    tap.ok(out and out[0] == "(unset)", "a job whose env leaves out the daemon's "
           "MALLOC_ARENA_MAX does not see it", out)
    tap.eq(forked_and_execd(d, "nomalloc", (0, 2)), (0, 2), "and is exec'd: a fork would "
           "keep the factory's malloc set-up")
    out = outputs(env, "inherit")
    tap.eq(out[:1] if out else None, ["hunter2"],
           "a job without env gets the daemon's environment")
    tap.eq(forked_and_execd(d, "inherit", (2, 0)), (2, 0), "and is forked")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_no_daemon_secrets_in_worker(tap, env):
    """A forked worker's memory and /proc/PID/environ come from the
    factory, which holds none of the daemon's environment."""
    cfg = config(env, ",\n".join([
        job("hold", ('"hang"',), env_group(FOO="bar") + ' timeout = "30s";'),
        job("inherit", ('"env:JR_TEST_SECRET"',))]))
    os.environ["JR_TEST_SECRET"] = "hunter2"
    try:
        d = start(tap, env, cfg)
    finally:
        del os.environ["JR_TEST_SECRET"]
    # First a job that inherits the daemon's environment: its request to
    # the factory carries the secret, which must not stay there.
    tap.eq(outputs(env, "inherit"), ["hunter2"], "a job without env has it")
    tap.ok(wait_for(lambda: not workers_of(d.pid)), "its worker is gone")
    ctl(env, "run", "hold")
    tap.ok(wait_for(lambda: len(workers_of(d.pid)) == 1), "a worker runs a task")
    pids = workers_of(d.pid)
    tap.eq(forked_and_execd(d, "hold", (1, 0)), (1, 0), "forked")
    for pid in pids + [factory_of(d.pid)]:
        with open("/proc/%d/environ" % pid, "rb") as f:
            environ = f.read()
        tap.ok(b"hunter2" not in environ, "%d: /proc environ holds none of the "
               "daemon's variables" % pid)
        found = False
        with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb") as mem:
            for line in maps:
                fields = line.split()
                if "w" not in fields[1] or (len(fields) > 5 and fields[5].startswith("/")):
                    continue
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if hi - lo > 64 << 20:
                    continue    # ASan's shadow: reserved, not our data
                try:
                    mem.seek(lo)
                    found |= b"hunter2" in mem.read(hi - lo)
                except (OSError, ValueError, OverflowError):
                    pass
        tap.ok(not found, "%d: nor does its writable memory" % pid)
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_hung_factory(tap, env):
    """A factory that never says READY (here: a jobrund-worker stand-in
    that sleeps when asked to be one) costs the daemon a bounded wait at
    start-up, then workers are exec'd."""
    fake = env.write("fake-worker", '#!/bin/sh\n'
                     'if [ "$1" = "--factory" ]; then exec sleep 60; fi\n'
                     'exec "%s" "$@"\n' % WORKER)
    os.chmod(fake, stat.S_IRWXU)
    cfg = config(env, job("hung"))
    os.environ["JOBRUND_WORKER_PATH"] = fake
    try:
        d = start(tap, env, cfg)
    finally:
        del os.environ["JOBRUND_WORKER_PATH"]
    tap.ok(d.wait_log(r"worker factory \d+: did not start in time"),
           "the factory's silence is said", d.log()[-5:])
    tap.ok(outputs(env, "hung"), "runs get exec'd workers")
    tap.eq(forked_and_execd(d, "hung", (0, 2)), (0, 2), "(exec'd)")
    tap.eq(workers_of(d.pid, "Z"), [], "no zombie left of it")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def pool_job(name, workers):
    """A process-mode job of WORKERS workers, as many tasks, one each."""
    return ('{ name = "%s"; plugin = "crash"; mode = "process"; workers = %d; '
            'schedule = "@manual"; max_tasks_per_worker = 1; inputs = [ %s ]; }'
            % (name, workers, ", ".join(['"pid"'] * workers)))


def test_cold_pool_forked_together(tap, env):
    """A cold pool's workers are asked of the factory together, more than
    it takes at once (16) too: every one forked, each serving a task."""
    cfg = config(env, pool_job("wide", 20))
    d = start(tap, env, cfg)
    out = outputs(env, "wide")
    tap.ok(len(set(out or [])) == 20, "20 workers served the run's 20 tasks", out)
    tap.eq(forked_and_execd(d, "wide", (20, 0)), (20, 0), "all forked by the factory")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_factory_stops_mid_batch(tap, env):
    """A factory that stops answering with a pool's requests in it costs
    one bounded wait, not one per request: every worker is exec'd and
    the run completes."""
    cfg = config(env, pool_job("stalled", 4))
    d = start(tap, env, cfg)
    fac = wait_for(lambda: factory_of(d.pid))
    tap.ok(fac, "the factory is up")
    os.kill(fac, signal.SIGSTOP)
    t0 = time.monotonic()
    out = outputs(env, "stalled")
    took = time.monotonic() - t0
    tap.ok(len(set(out or [])) == 4, "4 workers served the run", out)
    tap.ok(d.wait_log(r"worker factory %d: did not answer in time" % fac),
           "the factory's silence is said", d.log()[-5:])
    tap.eq(forked_and_execd(d, "stalled", (0, 4)), (0, 4), "every worker was exec'd")
    # One answer's wait (2 s), not one per request asked (8 s).
    tap.ok(took < 6, "the run waited for the factory once (%.1f s)" % took)
    tap.ok(wait_for(lambda: not os.path.exists("/proc/%d" % fac)),
           "the stopped factory is killed and reaped")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_batch_within_descriptor_limit(tap, env):
    """A cold pool's batch of requests must leave a descriptor for the
    first answer's pidfd: under a limit that 16 workers fit in, none is
    forked in vain and no shortage is claimed, whatever the limit."""
    cfg = config(env, pool_job("fds", 16))
    warned = []
    for limit in range(80, 96):
        rc, out, err = run(["prlimit", "--nofile=%d" % limit, JOBRUND, "-c", cfg,
                            "-e", "--once", "fds"])
        if rc != 0 or out.count('"status":"ok"') != 16 or \
                "cannot start more workers" in err:
            warned.append((limit, rc, [l for l in err.splitlines()
                                       if "cannot" in l or "adopted" in l][:3]))
    tap.eq(warned, [], "16 workers under RLIMIT_NOFILE 80-95: no shortage, "
           "every task ok")


def test_daemon_killed(tap, env):
    cfg = config(env, job("orphans", ('"hang"', '"hang"')))
    d = start(tap, env, cfg)
    fac = wait_for(lambda: factory_of(d.pid))
    ctl(env, "run", "orphans")
    tap.ok(wait_for(lambda: len(workers_of(d.pid)) == 2), "two forked workers run tasks")
    pids = workers_of(d.pid) + [fac]
    d.kill()
    tap.ok(wait_for(lambda: not any(os.path.exists("/proc/%d" % p) and
                                    stat_of(p)[0] != "Z" for p in pids)),
           "SIGKILL of the daemon takes its factory and workers with it")


main([test_forked_workers_are_as_execd, test_factory_killed, test_reload_takes_new_limits,
      test_factory_off,
      test_only_with_process_jobs, test_environment, test_no_daemon_secrets_in_worker, test_hung_factory,
      test_cold_pool_forked_together, test_factory_stops_mid_batch,
      test_batch_within_descriptor_limit, test_daemon_killed])
