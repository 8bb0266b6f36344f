"""jobrund as a daemon: schedules fire, results are logged, SIGHUP reloads
transactionally, SIGTERM stops cleanly with no worker left, a bad plugin
disables only its jobs, a bad config stops start-up.
"""

import signal
import time

from jrtest import Daemon, JOBRUND, main, processes_matching, run, track, wait_for


def test_start_every_and_stop(tap, env):
    cfg = env.config("""
  { name = "d_start"; plugin = "square"; mode = "thread"; inputs = [7]; },
  { name = "d_every"; plugin = "square"; mode = "process"; inputs = [5];
    schedule = "@every 200ms"; },
  { name = "d_manual"; plugin = "square"; mode = "thread"; inputs = [1];
    schedule = "@manual"; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job d_start run 1 task 0 input=7: ok output=49"),
           "an @start job runs at start-up and its result is logged", d.log()[-20:])
    tap.ok(d.wait_log(r"job d_every run \d+ task 0 input=5: ok output=25", n=3),
           "an @every job keeps firing", d.log()[-20:])
    tap.ok(processes_matching("jobrund-worker: d_every"),
           "its process worker is named jobrund-worker: JOB")
    tap.eq(d.count(r"job d_manual run"), 0, "an @manual job does not run by itself")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "SIGTERM: exit status 0")
    tap.eq(processes_matching("jobrund-worker: d_every"), [],
           "no worker left after SIGTERM")
    tap.ok(d.wait_log(r"stopped"), "the shutdown is logged")


def test_reload(tap, env):
    good = """
  { name = "r_a"; plugin = "square"; mode = "thread"; inputs = [2];
    schedule = "@every 100ms"; }"""
    cfg = env.config(good)
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job r_a run \d+ task 0 input=2: ok output=4", n=2),
           "job runs before the reload")
    # A broken file changes nothing, and every error is logged as FILE:LINE.
    env.config(good + """,
  { name = "r_b"; plugin = "square"; mode = "thread"; workers = 0; },
  { name = "r_c"; plugin = "nosuch"; mode = "thread"; }""")
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"reload of .* failed \(\d+ errors?\)"),
           "a broken reload is refused", d.log()[-10:])
    tap.ok(d.count(cfg + r":\d+: job 'r_b': workers") == 1,
           "its errors are logged with FILE:LINE", d.log()[-10:])
    n = d.count(r"job r_a run \d+ task 0")
    tap.ok(d.wait_log(r"job r_a run \d+ task 0", n=n + 2),
           "the old config keeps running after a refused reload")
    tap.eq(d.count(r"job r_b"), 0, "nothing from the broken file was applied")
    # A good file replaces the jobs.
    env.config("""
  { name = "r_new"; plugin = "square"; mode = "process"; inputs = [9]; },
  { name = "r_tick"; plugin = "square"; mode = "thread"; inputs = [1];
    schedule = "@every 100ms"; }""")
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"reloaded "), "a good reload is applied", d.log()[-10:])
    tap.ok(d.wait_log(r"job r_new run 1 task 0 input=9: ok output=81"),
           "a job added by reload starts (@start)", d.log()[-10:])
    n = d.count(r"job r_a run \d+ task 0")
    # While the new @every job fires 5 times, the removed one must not.
    tap.ok(d.wait_log(r"job r_tick run 5 task 0"), "the new @every job fires")
    tap.ok(d.count(r"job r_a run \d+ task 0") <= n + 1,
           "a removed job stops firing", d.log()[-10:])
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0 after reloads")


def test_sigterm_with_running_work(tap, env):
    cfg = env.config("""
  { name = "busy_t"; plugin = "sleep"; mode = "thread"; workers = 2; inputs = [60, 60]; },
  { name = "busy_p"; plugin = "crash"; mode = "process"; workers = 2;
    inputs = ["hang", "hang"]; }""", extra="shutdown_grace = 1.0;\n")
    d = Daemon(env, cfg)
    tap.ok(wait_for(lambda: len(processes_matching("jobrund-worker: busy_p")) == 2),
           "two process workers are busy")
    tap.ok(d.wait_log(r"job busy_t: run 1 started"), "thread tasks are running")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    d.signal(signal.SIGTERM)  # a second SIGTERM must not break shutdown
    rc = d.wait_exit()
    took = time.monotonic() - t0
    tap.eq(rc, 0, "SIGTERM with work running: exit 0")
    tap.ok(took < 1.0 + 1.0 + 5.0, "within shutdown_grace plus a second (and slack)",
           took)
    tap.eq(processes_matching("jobrund-worker: busy_p"), [],
           "workers ignoring SIGTERM were SIGKILLed: none left")
    tap.ok(d.count(r"job busy_t run 1 task \d .*: cancelled") == 2,
           "thread tasks were cancelled and recorded", d.log()[-20:])
    tap.ok(d.count(r"job busy_p run 1 task \d .*: cancelled") == 2,
           "process tasks were recorded as cancelled", d.log()[-20:])


def test_bad_plugin_disables_only_its_job(tap, env):
    cfg = env.config("""
  { name = "broken"; plugin = "badabi"; mode = "process"; },
  { name = "fine"; plugin = "square"; mode = "thread"; inputs = [4]; }""")
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job fine run 1 task 0 input=4: ok output=16"),
           "the good job runs")
    tap.ok(d.count(cfg + r":7: job 'broken'.*ABI") == 1,
           "the bad plugin is logged with FILE:LINE", d.log())
    d.signal(signal.SIGINT)
    tap.eq(d.wait_exit(), 0, "SIGINT: exit 0")


def test_bad_config_stops_startup(tap, env):
    cfg = env.config('{ name = "x"; plugin = "square"; mode = "thread"; retries = -1; }')
    rc, out, err = run([JOBRUND, "-c", cfg])
    tap.eq(rc, 1, "a config error: exit 1")
    tap.ok(cfg + ":6:" in err and "retries" in err,
           "with the reason on stderr as FILE:LINE", err)


def test_daemonize_and_pidfile(tap, env):
    import os
    cfg = env.config("""
  { name = "bg_every"; plugin = "square"; mode = "process"; inputs = [3];
    schedule = "@every 100ms"; }""")
    pidfile = os.path.join(env.dir, "jobrund.pid")
    rc, out, err = run([JOBRUND, "-d", "-p", pidfile, "-c", cfg])
    tap.eq(rc, 0, "-d returns at once with status 0")
    pid = wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip())
    tap.ok(pid and pid.isdigit(), "the pidfile holds a pid", pid)
    if not pid or not pid.isdigit():
        return
    pid = int(pid)
    track(pid)
    tap.ok(wait_for(lambda: processes_matching("jobrund-worker: bg_every")),
           "the detached daemon runs its jobs")
    os.kill(pid, signal.SIGTERM)
    tap.ok(wait_for(lambda: not os.path.exists("/proc/%d" % pid)
                    or open("/proc/%d/stat" % pid).read().split()[2] == "Z"),
           "SIGTERM stops the detached daemon")
    tap.ok(wait_for(lambda: not os.path.exists(pidfile)), "and removes its pidfile")
    tap.eq(processes_matching("jobrund-worker: bg_every"), [], "no worker left")


main([test_daemonize_and_pidfile, test_start_every_and_stop, test_reload, test_sigterm_with_running_work,
      test_bad_plugin_disables_only_its_job, test_bad_config_stops_startup])
