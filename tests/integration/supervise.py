"""Process mode as a supervisor: escaped processes, admin kills, worker
limits and identity, captured output, descriptor hygiene, daemon death.

Every test names its jobs and marker processes uniquely and checks, by
scanning /proc, that nothing it started is left behind.
"""

import json
import os
import re
import signal
import subprocess

import jrtest
from jrtest import (BUILDDIR, Daemon, children_of, workers_of, JOBRUND, TIMEOUT, main, processes_matching,
                    wait_for)


def once(cfg, *jobs):
    """jobrund -e --once: (status, results by (job, index), log)."""
    rc, res, err = finish(start_once(cfg, *jobs))
    return rc, sorted(res, key=lambda r: (r["job"], r["index"])), err

LIFETIMES = int(os.environ.get("JR_TEST_LIFETIMES", "10000"))


def job(name, inputs, extra="", workers=1, plugin="crash"):
    return ('{ name = "%s"; plugin = "%s"; mode = "process"; workers = %d; '
            'inputs = ( %s ); %s }' % (name, plugin, workers,
                                       ", ".join('"%s"' % i for i in inputs), extra))


def marker(env, what):
    return "jrtest-%s-%s" % (what, os.path.basename(env.dir))


def test_escapes_are_killed(tap, env):
    marks = [marker(env, w) for w in ("escape", "setsid", "bg")]
    cfg = env.config(job("esc", ["escape:" + marks[0], "setsid:" + marks[1],
                                 "bg:" + marks[2], "ok"]))
    rc, res, err = once(cfg)
    tap.eq([r.get("status") for r in res], ["ok"] * 4, "the escaping tasks succeed")
    for m, how in zip(marks, ("double fork + setsid", "setsid child",
                              "background child")):
        tap.ok(wait_for(lambda: not processes_matching(m), timeout=10),
               "a %s does not outlive the run" % how, processes_matching(m))


def test_escapes_killed_in_daemon(tap, env):
    m = marker(env, "descape")
    cfg = env.config(job("desc", ["escape:" + m], 'schedule = "@start";'))
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job desc: run 1 finished"), "the run finishes")
    tap.ok(wait_for(lambda: not processes_matching(m), timeout=10),
           "the daemon kills what the run left behind", d.log()[-10:])
    tap.ok(d.wait_log(r"killing process \d+ of job desc"), "and logs it")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def worker_pids(job_name):
    return processes_matching("jobrund-worker: " + job_name)


def start_once(cfg, *jobs):
    return subprocess.Popen([JOBRUND, "-e", "-c", cfg, "--once"] + list(jobs),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(p):
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    res = [json.loads(l) for l in out.splitlines()]
    return p.returncode, sorted(res, key=lambda r: (r["job"], r["index"])), err


def busy_job(name, env, n=1, workers=1):
    """A process-mode exec job whose tasks touch FILE.i when they are running
    (so a test knows a task is in progress, not a worker starting), then
    sleep; and one quick task after them."""
    inputs = ['"%s/%s.%d"' % (env.dir, name, i) for i in range(n)]
    return ('{ name = "%s"; plugin = "exec"; mode = "process"; workers = %d; '
            'inputs = ( %s, "quick" ); settings = { command = ["sh", "-c", '
            '"case $0 in quick) echo quick;; *) touch $0; exec sleep 30;; esac"]; }; }'
            % (name, workers, ", ".join(inputs)))


def busy_files(name, env, n=1):
    return all(os.path.exists("%s/%s.%d" % (env.dir, name, i)) for i in range(n))


def test_admin_kill(tap, env):
    for sig, name in ((signal.SIGKILL, "SIGKILL"), (signal.SIGTERM, "SIGTERM")):
        jname = "victim_%s" % name.lower()
        cfg = env.config(busy_job(jname, env))
        p = start_once(cfg)
        tap.ok(wait_for(lambda: busy_files(jname, env)), "%s: the task runs" % name)
        pids = worker_pids(jname)
        if pids:
            os.kill(pids[0], sig)
        rc, res, err = finish(p)
        tap.eq(rc, 3, "%s: the killed task fails the run" % name)
        tap.eq([r["status"] for r in res], ["killed", "ok"],
               "%s: recorded as killed; the run goes on with a new worker" % name)
        tap.ok(res and res[0].get("signal") == sig and
               res[0].get("signal_name") == name,
               "%s: with the signal" % name, res[:1])
        tap.ok(("worker %d killed by %s" % (pids[0] if pids else 0, name)) in err,
               "%s: logged with pid and signal" % name, err[-500:])
        tap.ok(wait_for(lambda: not processes_matching("sleep 30")),
               "%s: the task's own child went with its worker" % name)


def test_pkill_by_name(tap, env):
    cfg = env.config(busy_job("pk_job", env, n=2, workers=2))
    p = start_once(cfg)
    tap.ok(wait_for(lambda: busy_files("pk_job", env, 2)), "two tasks run")
    rc = subprocess.run(["pkill", "-f", "jobrund-worker: pk_job"]).returncode
    tap.eq(rc, 0, "pkill -f 'jobrund-worker: JOB' finds them")
    rc, res, err = finish(p)
    tap.eq([r["status"] for r in res], ["killed", "killed", "ok"],
           "both busy tasks: killed; the last one runs")
    tap.eq(worker_pids("pk_job"), [], "no worker left")


def test_max_tasks_per_worker(tap, env):
    cfg = env.config(job("mt", ["pid"] * 6, "max_tasks_per_worker = 2;"))
    rc, res, err = once(cfg)
    pids = [r.get("output") for r in res]
    tap.eq(rc, 0, "max_tasks_per_worker: all ok")
    tap.ok(len(set(pids)) == 3 and all(pids.count(x) == 2 for x in set(pids)),
           "each worker served exactly 2 tasks", pids)


def test_max_rss(tap, env):
    cfg = env.config(job("rss", ["leak:64", "leak:64", "pid"], 'max_rss = "32M";'))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "max_rss: tasks succeed")
    tap.eq(len({r["pid"] for r in res}), 3, "a worker over max_rss is replaced")
    tap.ok("over max_rss" in err, "and it is logged", err[-300:])


def test_rlimits(tap, env):
    asan = jrtest.SANITIZERS
    cfg = env.config(",\n".join([
        job("rl", ["rlimit:nofile", "rlimit:core"] + ([] if asan else ["rlimit:as"]),
            'rlimits = { nofile = 64; core = 0; %s};' % ("" if asan else 'as = "1G"; ')),
        job("rl_cpu", ["spin"], "rlimits = { cpu = 1; };")] +
        ([] if asan else [job("rl_as", ["leak:512"], 'rlimits = { as = "256M"; };')])))
    rc, res, err = once(cfg)
    tap.eq([r["output"] for r in res if r["job"] == "rl"],
           ["64", "0"] + ([] if asan else [str(1 << 30)]),
           "rlimits are applied in the worker")
    cpu = [r for r in res if r["job"] == "rl_cpu"]
    tap.ok(cpu and cpu[0]["status"] == "crashed" and
           cpu[0].get("signal_name") in ("SIGXCPU", "SIGKILL"),
           "a CPU-time limit ends a spinning task", cpu)
    if asan:
        tap.skip("an address-space limit stops a memory bomb",
                 "ASan reserves more address space than any sane RLIMIT_AS")
        return
    mem = [r for r in res if r["job"] == "rl_as"]
    tap.ok(mem and mem[0]["status"] == "failed" and "allocate" in mem[0].get("error", ""),
           "an address-space limit stops a memory bomb", mem)


def test_env_and_cwd(tap, env):
    cfg = env.config(",\n".join([
        job("envj", ["env:FOO", "env:HOME", "env:JOBRUND_JOB", "env:PATH", "cwd"],
            'env = { FOO = "bar baz"; }; cwd = "%s";' % env.dir),
        job("envinh", ["env:JR_TEST_INHERITED"])]))
    p = subprocess.run([JOBRUND, "-c", cfg, "--once"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=TIMEOUT,
                       env=dict(os.environ, JR_TEST_INHERITED="yes"))
    res = sorted((json.loads(l) for l in p.stdout.splitlines()),
                 key=lambda r: (r["job"], r["index"]))
    tap.eq([r["output"] for r in res if r["job"] == "envj"],
           ["bar baz", "(unset)", "envj", "/usr/local/bin:/usr/bin:/bin", env.dir],
           "env gives a clean environment with the listed variables; cwd applies")
    tap.eq([r["output"] for r in res if r["job"] == "envinh"], ["yes"],
           "without env, jobrund's environment is inherited")


def test_user(tap, env):
    if os.geteuid() != 0:
        tap.ok(True, "# SKIP not root: user switching not testable")
        return
    cfg = env.config(job("usr", ["id"], 'user = "nobody";'))
    rc, res, err = once(cfg)
    import pwd
    nobody = pwd.getpwnam("nobody")
    tap.eq([r.get("output") for r in res], ["%d %d" % (nobody.pw_uid, nobody.pw_gid)],
           "user = nobody: the worker runs as nobody")


def test_output_capture(tap, env):
    cfg = env.config(",\n".join([
        job("outj", ["print", "ok"]),
        job("spew", ["spew:300000", "ok"], 'output_limit = "1K";')]))
    rc, res, err = once(cfg)
    outj = [r for r in res if r["job"] == "outj"]
    tap.ok(outj and "noise from the plugin on stdout" in outj[0].get("worker_output", "")
           and "noise from the plugin on stderr" in outj[0].get("worker_output", ""),
           "what a task prints is kept with its result", outj[:1])
    tap.ok(len(outj) > 1 and "worker_output" not in outj[1],
           "and not with the next task's", outj)
    tap.ok("worker %d: noise from the plugin on stderr" % outj[0]["pid"] in err,
           "and logged line by line with the job's name", err[-500:])
    sp = [r for r in res if r["job"] == "spew"]
    tap.ok(sp and len(sp[0].get("worker_output", "")) == 1024 and
           sp[0].get("worker_output_dropped") == 300000 - 1024,
           "output past output_limit is counted as dropped", sp[:1] and
           {k: v for k, v in sp[0].items() if k != "worker_output"})


def test_only_own_fds(tap, env):
    # At log_level debug too: what the worker logs goes through the
    # daemon, never through a syslog socket of its own.
    for level in ("info", "debug"):
        cfg = env.config(job("fdj", ["fds"]), name="fds-%s.conf" % level)
        with open(cfg) as f:
            text = f.read()
        env.write(os.path.basename(cfg), text.replace('log_level = "info";',
                                                      'log_level = "%s";' % level))
        rc, res, err = once(cfg)
        fds = dict(l.split("=", 1) for l in
                   (res[0].get("output", "") if res else "").split("\n"))
        # The loader holds the plugin file open (that is how it dlopens
        # exactly the file it checked); nothing else may be there.
        own = {k: v for k, v in fds.items() if not v.endswith("/crash.so")}
        tap.eq(sorted(own), ["0", "1", "2", "3"],
               "log_level %s: a worker has only fds 0-2 and its socket (and "
               "its plugin)" % level)
        tap.ok(own.get("0") == "/dev/null" and own.get("3", "").startswith("socket:")
               and own.get("1", "").startswith("pipe:"), "log_level %s: stdin is "
               "/dev/null, stdout a pipe to the daemon, fd 3 the socket" % level, fds)
    tap.ok(re.search(r"job fdj: worker \d+: output pipe watched (through io_uring|"
                     r"by FIONREAD)", err),
           "at debug, the worker says how it watches its output", err[-800:])


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def zombies_of(pid):
    return children_of(pid, "Z")


def test_hygiene_many_lifetimes(tap, env):
    # Two runs of one-task workers, half the lifetimes each, started with
    # jobrunctl; the daemon is idle after each and must hold the same
    # descriptors both times.
    n = LIFETIMES // 2
    jobrunctl = os.path.join(BUILDDIR, "jobrunctl")
    cfg = env.config(job("life", ["pid"] * n, 'max_tasks_per_worker = 1; '
                         'schedule = "@manual";', workers=2))
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"jobrund .* started"), "daemon up")
    counts = []
    for run in (1, 2):
        p = subprocess.run([jobrunctl, "-s", env.socket, "run", "life", "--wait"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, timeout=TIMEOUT * 5)
        tap.eq(p.returncode, 0, "run %d: %d worker lifetimes, all ok" % (run, n))
        # The log may lag behind by a pipe-full: its own end-of-run line
        # says when all of the run's lines have been read.
        tap.ok(d.wait_log(r"job life: run %d finished in [0-9.]+s: %d ok, 0 not ok"
                          % (run, n)), "run %d: logged as %d ok" % (run, n))
        # Gone means reaped: a worker's descriptors close as it is reaped.
        tap.ok(wait_for(lambda: not workers_of(d.pid)), "run %d: workers gone" % run)
        counts.append(fd_count(d.pid))
    tap.ok([d.count(r"job life run %d task \d+ input=pid: ok" % run) for run in (1, 2)]
           == [n, n], "every task's result is accounted for",
           [l for l in d.log() if "job life run" in l and ": ok output" not in l][:10])
    tap.eq(counts[0], counts[1], "the daemon's descriptor count is flat")
    tap.eq(zombies_of(d.pid), [], "no zombies")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


def test_daemon_death_takes_workers(tap, env):
    cfg = env.config(job("orphan", ["hang", "hang"], workers=2))
    d = Daemon(env, cfg)
    pids = wait_for(lambda: len(worker_pids("orphan")) == 2 and worker_pids("orphan"))
    tap.ok(pids, "two workers busy")
    d.proc.kill()
    d.proc.wait()
    tap.ok(wait_for(lambda: not worker_pids("orphan"), timeout=5),
           "SIGKILL of the daemon: its workers die with it",
           worker_pids("orphan"))


def test_comm_and_cmdline(tap, env):
    cfg = env.config(job("named", ["30"], plugin="sleep"))
    p = start_once(cfg)
    pids = wait_for(lambda: worker_pids("named"))
    comm = open("/proc/%d/comm" % pids[0]).read().strip() if pids else None
    tap.eq(comm, "jobrund-worker", "comm is jobrund-worker (pkill jobrund-worker)")
    if pids:
        cmd = open("/proc/%d/cmdline" % pids[0]).read().strip("\0")
        tap.eq(cmd, "jobrund-worker: named", "ps shows jobrund-worker: JOB")
    p.send_signal(signal.SIGINT)
    finish(p)


def test_thread_mode_stuck(tap, env):
    # Thread mode cannot kill: a task ignoring cancellation is given up as
    # `timeout` after kill_grace, and the job runs nothing more meanwhile.
    cfg = env.config('{ name = "stuck"; plugin = "crash"; mode = "thread"; '
                     'inputs = ["spin", "ok"]; timeout = "200ms"; '
                     'kill_grace = "200ms"; }', extra="shutdown_grace = 0.5;\n")
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "a stuck thread fails the run")
    tap.eq([r.get("status") for r in res], ["timeout", "skipped"],
           "the stuck task is a timeout; the next is not run")
    tap.ok(res and "stuck" in res[0].get("error", ""), "the error says it is stuck",
           res[:1])
    tap.ok("stuck in the plugin" in err and "exiting anyway" in err,
           "it is logged loudly, and --once still exits", err[-600:])
    # With retries, the stuck task is not retried into `skipped`: its
    # timeout is what the user must see.
    cfg = env.config('{ name = "stuck"; plugin = "crash"; mode = "thread"; '
                     'inputs = ["spin"]; timeout = "200ms"; retries = 2; '
                     'kill_grace = "200ms"; }', name="retry.conf",
                     extra="shutdown_grace = 0.5;\n")
    rc, res, err = once(cfg)
    tap.ok(rc == 3 and [(r.get("status"), r.get("attempt")) for r in res] ==
           [("timeout", 1)], "with retries: still a timeout, not retried", res)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_endless_line(tap, env):
    # 512 MiB on stdout without a newline: the daemon reads it all, keeps
    # output_limit of it, logs the start once, and does not grow.
    n = 512 << 20
    cfg = env.config(job("endless", ["spew:%d" % n], 'schedule = "@start";'))
    d = Daemon(env, cfg)
    tap.ok(d.wait_log(r"job endless: run 1 finished", timeout=TIMEOUT * 2),
           "the run finishes")
    tap.ok(d.count(r"job endless run 1 task 0 input=spew:\d+: ok") == 1,
           "the task succeeds")
    tap.ok(rss_kib(d.pid) < 64 * 1024, "the daemon stays small (%d KiB)"
           % rss_kib(d.pid))
    lines = d.count(r"job endless: worker \d+: ")
    tap.ok(lines <= 3, "the endless line is logged once, not split %d times" % lines,
           lines)
    tap.ok(d.wait_log(r"more bytes of that line not logged"),
           "and the log says how much was left out")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "clean exit")


main([test_endless_line, test_thread_mode_stuck, test_escapes_are_killed, test_escapes_killed_in_daemon, test_admin_kill,
      test_pkill_by_name, test_max_tasks_per_worker, test_max_rss, test_rlimits,
      test_env_and_cwd, test_user, test_output_capture, test_only_own_fds,
      test_comm_and_cmdline, test_daemon_death_takes_workers,
      test_hygiene_many_lifetimes])
