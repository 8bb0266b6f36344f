"""The fault catalogue's entries not covered elsewhere (issue 9): a fork
bomb under RLIMIT_NPROC, a task leaking descriptors, an infinite loop in
process mode, a config nested 5,000 deep, a config including itself or a
file others may write, a full disk under state_dir, and a daemon out of
descriptors.

Each test asserts what is recorded and that nothing is lost or left
behind.  The rest of the catalogue lives with the code it exercises:
once.py (segfault, abort, exit, hang ignoring SIGTERM, timeouts),
supervise.py (escapes, admin kills, rlimits, memory bomb, output spew,
10,000 worker lifetimes, daemon SIGKILL, thread-mode hang), daemon.py
and schedule.py (SIGTERM with work, SIGHUP broken/changed, SIGHUP
storm), history.py (abandoned runs), check_config.py (plugins, ranges,
types), ctl.py (another uid, EMFILE on accept, 100 clients).

Checks marked TODO state what jobrund should do and does not yet; the
comment beside each names the file and line to fix.  They show as
XFAIL, and as XPASS (a failure) once fixed, so that the TODO is removed.
"""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time

from jrtest import (BUILDDIR, Daemon, JOBRUND, workers_of, TIMEOUT, exhaust_descriptors, main,
                    processes_matching, run, wait_for)

JOBRUNCTL = os.path.join(BUILDDIR, "jobrunctl")


def todo(tap, cond, name, why, diag=None):
    """A TAP TODO point: what should hold and does not yet (WHY)."""
    tap.n += 1
    print("%s %d - %s # TODO %s" % ("ok" if cond else "not ok", tap.n, name, why))
    if not cond and diag is not None:
        for line in str(diag).splitlines():
            print("# " + line)


def job(name, inputs, extra="", workers=1, plugin="crash", mode="process"):
    return ('{ name = "%s"; plugin = "%s"; mode = "%s"; workers = %d; '
            'inputs = ( %s ); %s }' % (name, plugin, mode, workers,
                                       ", ".join('"%s"' % i for i in inputs), extra))


def once(cfg, *jobs):
    """jobrund -e --once: (status, results by (job, index), log)."""
    p = subprocess.run([JOBRUND, "-e", "-c", cfg, "--once"] + list(jobs),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=TIMEOUT * 2)
    res = [json.loads(l) for l in p.stdout.splitlines()]
    return p.returncode, sorted(res, key=lambda r: (r["job"], r["index"])), p.stderr


def ctl(env, *args, timeout=TIMEOUT):
    return run([JOBRUNCTL, "-s", env.socket] + list(args), timeout=timeout)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def settled_fd_count(pid):
    """PID's descriptor count once it holds still (a control client the
    daemon has yet to drop goes first)."""
    seen = []

    def still():
        seen.append(fd_count(pid))
        return len(seen) >= 4 and len(set(seen[-4:])) == 1
    wait_for(still, interval=0.05)
    return seen[-1]


# --- process mode -------------------------------------------------------------

def test_fork_bomb(tap, env):
    # RLIMIT_NPROC binds only a uid other than root: the job runs as nobody.
    if os.geteuid() != 0:
        tap.skip("a fork bomb is stopped by rlimits.nproc", "not root: no user = to test with")
        return
    cfg = env.config(job("fbomb", ["forkbomb", "ok"],
                         'user = "nobody"; rlimits = { nproc = 16; };'))
    rc, res, err = once(cfg)
    tap.eq([r.get("status") for r in res], ["ok", "ok"],
           "fork bomb: the bombing task and the next one both end")
    m = re.match(r"(\d+) children, then fork: Resource temporarily unavailable$",
                 res[0].get("output", "") if res else "")
    tap.ok(m and int(m.group(1)) < 16, "fork bomb: RLIMIT_NPROC stops it (EAGAIN)",
           res[:1])
    tap.eq(processes_matching("jobrund-worker: fbomb"), [],
           "fork bomb: every process of the bomb is gone with the run")
    tap.ok(re.search(r"job fbomb: worker \d+ left \d+ processes running after the "
                     r"run: killing them", err),
           "fork bomb: the leftovers are killed, and that is logged", err[-800:])


def test_descriptor_leak(tap, env):
    # A plugin opening descriptors it never closes: process mode contains
    # it in its worker (rlimits.nofile: the worker's tasks fail with
    # EMFILE, nothing else does) and max_tasks_per_worker cures it (the
    # worker is replaced before it runs out).  Thread mode cannot: the
    # descriptors are the daemon's (README, "What each mode can promise").
    cfg = env.config(",\n".join([
        job("fdl", ["fdleak:10"] * 4, "rlimits = { nofile = 32; };"),
        job("fdl_rot", ["fdleak:10"] * 4,
            "rlimits = { nofile = 32; }; max_tasks_per_worker = 2;"),
        job("fdl_other", ["ok"])]))
    rc, res, err = once(cfg)
    fdl = [r for r in res if r["job"] == "fdl"]
    out = [int(r["output"]) for r in fdl[:2] if r.get("status") == "ok"]
    tap.ok(len(out) == 2 and out[1] == out[0] + 10 and out[1] <= 32,
           "descriptor leak: the leaks accumulate in the worker", fdl[:2])
    tap.ok([r.get("status") for r in fdl[2:]] == ["failed", "failed"] and
           all("Too many open files" in r.get("error", "") for r in fdl[2:]),
           "descriptor leak: past rlimits.nofile the tasks fail with EMFILE", fdl[2:])
    tap.eq(len({r["pid"] for r in fdl}), 1, "descriptor leak: in one worker, that goes on")
    rot = [r for r in res if r["job"] == "fdl_rot"]
    tap.ok([r.get("status") for r in rot] == ["ok"] * 4 and
           len({r["pid"] for r in rot}) == 2 and
           [r["output"] for r in rot[:2]] == [r["output"] for r in rot[2:]],
           "descriptor leak: max_tasks_per_worker replaces the worker in time", rot)
    tap.eq([r.get("status") for r in res if r["job"] == "fdl_other"], ["ok"],
           "descriptor leak: other jobs do not notice")
    tap.eq(rc, 3, "descriptor leak: the failed tasks fail the run")


def test_infinite_loop(tap, env):
    cfg = env.config(job("loop", ["spin", "ok"],
                         'timeout = "300ms"; kill_grace = "300ms";'))
    t0 = time.monotonic()
    rc, res, err = once(cfg)
    took = time.monotonic() - t0
    tap.eq([r.get("status") for r in res], ["timeout", "ok"],
           "infinite loop: the task times out; the next one runs")
    spin = res[0] if res else {}
    tap.ok(spin.get("signal_name") == "SIGTERM" and "timed out" in spin.get("error", ""),
           "infinite loop: its worker is ended by SIGTERM, and the error says why", spin)
    tap.ok(len(res) == 2 and res[0]["pid"] != res[1]["pid"],
           "infinite loop: a new worker serves the next task")
    tap.ok(took < 10, "infinite loop: promptly (%.1fs)" % took)
    tap.ok(spin.get("wall_s", 0) >= 0.25,
           "infinite loop: the timed-out task's wall_s is the time it ran", spin)
    tap.eq(processes_matching("jobrund-worker: loop"), [], "infinite loop: no worker left")


# --- bad configs ----------------------------------------------------------------

def nested(kind, depth):
    if kind == "group":
        return "{ x = " * depth + "1" + "; }" * depth
    return "( " * depth + "1" + " )" * depth


def test_deep_nesting(tap, env):
    good = env.config(job("fine", ["ok"], 'schedule = "@manual";'))
    for kind in ("group", "list"):
        path = env.write("deep-%s.conf" % kind, open(good).read() +
                         "settings_x = %s;\n" % nested(kind, 5000))
        t0 = time.monotonic()
        rc, out, err = run([JOBRUND, "-c", path, "-t"])
        took = time.monotonic() - t0
        tap.ok(rc == 1 and re.match(re.escape(path) + r":\d+: .*nesting too deep", err),
               "5,000-deep %s: -t refuses it, FILE:LINE saying why" % kind, err[:300])
        tap.ok(took < 10, "5,000-deep %s: promptly (%.2fs)" % (kind, took))
    # Nested as deep as libconfig takes (a list 3,000 deep), inside a job:
    # validated and refused with the job's line, not a crash.
    path = env.write("deep-ok.conf", open(good).read().replace(
        'inputs = ( "ok" );', 'inputs = ( "ok" ); settings = { deep = %s; };'
        % nested("list", 3000)))
    rc, out, err = run([JOBRUND, "-c", path, "-t"])
    tap.ok(rc == 1 and re.match(re.escape(path) + r":6: job 'fine': settings\.deep", err),
           "3,000-deep settings: validated, refused at the job's line", err[:300])

    # A running daemon offered a 5,000-deep config keeps its own.
    d = Daemon(env, good)
    tap.ok(d.wait_log(r"jobrund .* started"), "daemon up")
    shutil.copyfile(os.path.join(env.dir, "deep-list.conf"), good)
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"nesting too deep") and d.wait_log(r"reload of .* failed"),
           "5,000-deep reload: refused, saying why", d.log()[-5:])
    tap.eq(ctl(env, "run", "fine", "--wait")[0], 0, "5,000-deep reload: jobs still run")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "5,000-deep reload: exit 0")


def test_self_include(tap, env):
    me = env.write("self.conf", '@include "self.conf"\njobs = ();\n')
    rc, out, err = run([JOBRUND, "-c", me, "-t"])
    tap.ok(rc == 1 and "include file nesting too deep" in err and me in err,
           "a config including itself: -t refuses it, naming the file", err[:300])
    a = env.write("a.conf", '@include "b.conf"\n')
    env.write("b.conf", '@include "a.conf"\n')
    rc, out, err = run([JOBRUND, "-c", a, "-t"])
    tap.ok(rc == 1 and "include file nesting too deep" in err,
           "two configs including each other: refused", err[:300])
    rc, out, err = run([JOBRUND, "-c", me])
    tap.ok(rc == 1 and "include file nesting too deep" in err,
           "the daemon does not start on it (exit 1, why on stderr)", err[:300])


def test_include_trusted(tap, env):
    # An @include says which commands run as root as much as the main file
    # does: it gets the same owner and mode checks.
    env.write("inc.conf", '{ name = "inc"; plugin = "exec"; mode = "process"; '
              'settings = { command = [ "id" ]; }; }\n')
    cfg = env.config('@include "inc.conf"')
    rc, out, err = run([JOBRUND, "-c", cfg, "-t"])
    tap.eq(rc, 0, "an @include owned by root, mode 0644: accepted")
    inc = os.path.join(env.dir, "inc.conf")
    os.chmod(inc, 0o666)
    rc, out, err = run([JOBRUND, "-c", cfg, "-t"])
    tap.ok(rc == 1 and "%s: writable by others" % inc in err,
           "an @include writable by others: refused, naming it", err)
    if os.geteuid() == 0:
        os.chmod(inc, 0o644)
        os.chown(inc, 65534, 65534)
        rc, out, err = run([JOBRUND, "-c", cfg, "-t"])
        tap.ok(rc == 1 and "%s: owned by uid 65534" % inc in err,
               "an @include owned by another user: refused", err)


# --- resources ------------------------------------------------------------------

def mount_tmpfs(path, size):
    os.makedirs(path)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size,
                        "tmpfs", path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return p.returncode == 0, p.stdout.strip()


def fill(path):
    """Write zeros to PATH until the file system is full."""
    chunk = b"\0" * (1 << 16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_disk(tap, env):
    disk = os.path.join(env.dir, "disk")
    if os.geteuid() != 0:
        tap.skip("a full disk under state_dir", "not root: cannot mount a small tmpfs")
        return
    ok, why = mount_tmpfs(disk, "16m")
    if not ok:
        tap.skip("a full disk under state_dir", "cannot mount a tmpfs here: " + why)
        return
    try:
        env.state_dir = os.path.join(disk, "state")
        cfg = env.config(job("full", ["ok", "ok"], 'schedule = "@every 100ms";'))
        d = Daemon(env, cfg)
        tap.ok(d.wait_log(r"job full: run 3 finished"), "full disk: runs recorded",
               d.log()[-5:])
        fill(os.path.join(disk, "filler"))
        tap.ok(d.wait_log(r"history: .*the disk is full: runs are not recorded"),
               "full disk: the daemon says so", d.log()[-5:])
        n = d.count(r"job full: run \d+ finished")
        tap.ok(d.wait_log(r"job full: run \d+ finished", n=n + 10),
               "full disk: scheduling goes on")
        tap.eq(ctl(env, "status")[0], 0, "full disk: the control socket answers")
        tap.eq(d.count(r"the disk is full"), 1, "full disk: logged once, not per write")
        os.unlink(os.path.join(disk, "filler"))
        tap.ok(d.wait_log(r"history: writes work again"), "full disk: room again: "
               "writes resume, and that is logged", d.log()[-5:])
        rc, out, err = ctl(env, "--json", "history", "full", "-n", "1")
        last = json.loads(out)["runs"][0]["run"] if rc == 0 else None
        tap.ok(last is not None and last > n, "full disk: new runs are in the history",
               out + err)
        d.signal(signal.SIGTERM)
        tap.eq(d.wait_exit(), 0, "full disk: exit 0")
    finally:
        for dd in env.daemons:
            dd.kill()
        subprocess.run(["umount", "-l", disk])


def test_history_stays_bounded(tap, env):
    # A job every 10 ms writes the history some 100 times a second; the
    # checkpointer must keep copying the WAL back so it stays bounded (an
    # unbounded WAL is a full disk in waiting).
    cfg = env.config(job("wal", ["1", "2", "3"], 'schedule = "@every 10ms";',
                         plugin="square", mode="thread"))
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job wal: run 300 finished"), "300 runs in a few seconds")
    wal = os.path.join(env.state_dir, "history.db-wal")
    size = os.path.getsize(wal) if os.path.exists(wal) else 0
    # The checkpointer keeps the WAL bounded (it once never checkpointed:
    # its connection had not read the database, so SQLite did not know
    # it was in WAL mode).
    tap.ok(size < 8 << 20, "the WAL stays under 8 MiB (%d KiB)" % (size >> 10))
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")


def test_out_of_descriptors(tap, env):
    # prlimit --nofile=64 on a running daemon, then a run wanting 40
    # workers (each takes a socket, a pipe and a pidfd in the daemon).
    inputs = ", ".join(['"0.3"'] * 80)
    cfg = env.config("""
  { name = "many"; plugin = "sleep"; mode = "process"; workers = 40;
    schedule = "@manual"; inputs = [ %s ]; },
  { name = "tick"; plugin = "square"; mode = "thread"; schedule = "@every 100ms";
    inputs = [ 1 ]; }""" % inputs)
    d = Daemon(env, cfg)
    tap.ok(wait_for(lambda: ctl(env, "version")[0] == 0), "daemon up")
    resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (64, 64))
    before = settled_fd_count(d.pid)
    rc, out, err = ctl(env, "--json", "run", "many", "--wait", timeout=TIMEOUT * 2)
    res = [json.loads(l) for l in out.splitlines()]
    tap.eq(sorted(r["index"] for r in res), list(range(80)),
           "out of descriptors: every task has exactly one result")
    bad = [r for r in res if r["status"] != "ok"]
    tap.ok(all("Too many open files" in r.get("error", "") for r in bad),
           "out of descriptors: a task that could not get a worker says why",
           bad[:3])
    tap.ok(bad == [] or d.count(r"Too many open files") > 0,
           "out of descriptors: and the log says so")
    # A shortage (EMFILE, ENFILE, EAGAIN, ENOMEM) with a worker serving
    # keeps the tasks queued for it; only with no worker left do they fail.
    tap.ok(bad == [], "out of descriptors: the tasks run on the workers "
           "there is room for", "%d of 80 failed" % len(bad))
    n = d.count(r"job tick: run \d+ finished")
    tap.ok(d.wait_log(r"job tick: run \d+ finished", n=n + 3), "out of descriptors: "
           "scheduling goes on")
    tap.eq(ctl(env, "status")[0], 0, "out of descriptors: the control socket answers")
    rc, out, err = ctl(env, "--json", "run", "many", "--wait", timeout=TIMEOUT * 2)
    res = [json.loads(l) for l in out.splitlines()]
    tap.eq(sorted(r["index"] for r in res), list(range(80)),
           "out of descriptors: a second run is accounted for too")
    # A changed job's idle workers go; gone means reaped, and a worker's
    # descriptors close as it is reaped.
    env.write("jobrund.conf", open(cfg).read().replace("workers = 40;", "workers = 39;"))
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"reloaded .*1 changed"), "out of descriptors: reloaded",
           d.log()[-3:])
    tap.ok(wait_for(lambda: not workers_of(d.pid)), "out of descriptors: workers gone")
    tap.eq(settled_fd_count(d.pid), before, "out of descriptors: no descriptor "
           "leaked by the spawns that failed")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "out of descriptors: exit 0")
    tap.eq(processes_matching("jobrund-worker: many"), [], "out of descriptors: "
           "no worker left")


def test_timers_without_descriptors(tap, env):
    # Every descriptor taken by idle control clients: what the daemon does
    # next needs timers (a failed task's retry, the schedule's next run),
    # and a timer must not need a descriptor (it once did, and the daemon
    # exited: "timerfd_create: Too many open files").
    cfg = env.config("""
  { name = "flaky"; plugin = "square"; mode = "thread"; schedule = "@every 200ms";
    inputs = [ "abc" ]; retries = 1; retry_delay = "50ms"; }""")
    d = Daemon(env, cfg)
    tap.ok(wait_for(lambda: ctl(env, "version")[0] == 0), "daemon up")
    conns = exhaust_descriptors(env, d.pid)
    tap.ok(d.wait_log(r"control socket: accept: Too many open files"),
           "the daemon runs out of descriptors", d.log()[-5:])
    n = d.count(r"job flaky: run \d+ finished")
    tap.ok(d.wait_log(r"job flaky: run \d+ finished", n=n + 3),
           "out of descriptors, runs go on, each task retried on a timer",
           d.log()[-5:])
    tap.ok(d.proc.poll() is None and d.count(r"retry 1 of 1") >= 3,
           "and the daemon is still there", d.log()[-5:])
    for c in conns:
        c.close()
    tap.ok(wait_for(lambda: ctl(env, "status")[0] == 0),
           "serving clients again once they leave")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "exit 0")


main([test_fork_bomb, test_descriptor_leak, test_infinite_loop, test_deep_nesting,
      test_self_include, test_include_trusted, test_full_disk,
      test_history_stays_bounded, test_out_of_descriptors,
      test_timers_without_descriptors])
