"""jobrunctl and the control socket: every command in both output forms,
run --wait streaming and its exit status, kill and cancel in both modes
with their results recorded, the socket's modes and the peer check (other
uids through setpriv), control_readonly, stale and live sockets, many
clients at once, silent clients, descriptor exhaustion, and bad requests
that change nothing.
"""

import json
import os
import signal
import socket
import stat
import subprocess
import time

from jrtest import (BUILDDIR, JOBRUND, TIMEOUT, Daemon, exhaust_descriptors, main, run,
                    wait_for)

JOBRUNCTL = os.path.join(BUILDDIR, "jobrunctl")
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def use_run_dir(env):
    """Put the socket in a directory of its own, as /run/jobrund is."""
    env.socket = os.path.join(env.dir, "run", "jobrund.sock")


def ctl(env, *args, prefix=(), timeout=TIMEOUT):
    """jobrunctl against ENV's socket: (status, stdout, stderr)."""
    return run(list(prefix) + [JOBRUNCTL, "-s", env.socket] + list(args),
               timeout=timeout)


def ctl_json(env, *args, prefix=()):
    """jobrunctl --json: (status, parsed document or None, stderr)."""
    rc, out, err = ctl(env, "--json", *args, prefix=prefix)
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = {"unparsable": out}
    return rc, doc, err


def json_lines(text):
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"unparsable": line})
    return out


def start(env, cfg, tap):
    """Start jobrund and wait until its socket answers."""
    d = Daemon(env, cfg)
    ok = wait_for(lambda: d.proc.poll() is not None or
                  ctl(env, "version")[0] == 0)
    tap.ok(ok and d.proc.poll() is None, "jobrund starts and answers on its socket",
           "\n".join(d.log()[-20:]))
    return d


def stop(tap, d):
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "jobrund stops cleanly (exit 0)")


def show(env, job):
    rc, doc, err = ctl_json(env, "show", job)
    return doc if rc == 0 else None


def last_run(env, job):
    doc = show(env, job)
    return doc and doc.get("last_run")


def busy_workers(env, job):
    rc, doc, err = ctl_json(env, "workers", job)
    if rc != 0:
        return 0
    return sum(1 for w in doc["workers"] if w["state"] == "busy")


RESULT_KEYS = {"job", "run", "index", "input", "status", "output", "mode", "pid",
               "started", "wall_s", "cpu_s"}


def test_commands_both_forms(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "t_sq"; plugin = "square"; mode = "thread"; inputs = [2, 3];
    schedule = "@manual"; },
  { name = "p_sq"; plugin = "square"; mode = "process"; inputs = [4];
    schedule = "@every 1h"; settings = { }; },
  { name = "off"; plugin = "square"; mode = "thread"; enabled = false; }""")
    d = start(env, cfg, tap)

    rc, out, err = ctl(env, "version")
    tap.ok(rc == 0 and out.startswith("jobrunctl ") and "\njobrund " in out and
           "pid %d" % d.pid in out, "version: both programs' versions", out + err)
    rc, doc, err = ctl_json(env, "version")
    tap.ok(rc == 0 and doc["jobrund"]["protocol"] == 1 and
           doc["jobrund"]["pid"] == d.pid and doc["jobrunctl"]["protocol"] == 1,
           "version --json", doc)

    rc, out, err = ctl(env, "status")
    lines = out.splitlines()
    tap.ok(rc == 0 and lines[0].startswith("jobrund ") and
           lines[1].split()[:2] == ["JOB", "MODE"], "status: a header and a table", out)
    rows = {l.split()[0]: l for l in lines[2:]}
    tap.ok(set(rows) == {"t_sq", "p_sq", "off"} and "disabled" in rows["off"] and
           "@every 1h" in rows["p_sq"] and " in " in rows["p_sq"],
           "status: one row per job, with state and next run", out)
    rc, doc, err = ctl_json(env, "status")
    jobs = {j["name"]: j for j in doc["jobs"]} if rc == 0 else {}
    tap.ok(rc == 0 and doc["daemon"]["pid"] == d.pid and
           jobs["off"]["state"] == "disabled" and jobs["t_sq"]["state"] == "idle" and
           jobs["t_sq"]["next_run"] is None and jobs["p_sq"]["next_run"] and
           jobs["t_sq"]["last_run"] is None, "status --json", doc)

    rc, out, err = ctl(env, "run", "t_sq", "--wait")
    tap.ok(rc == 0 and "t_sq run 1 task 0 [2]: ok 4" in out and
           "t_sq run 1 task 1 [3]: ok 9" in out and "2 tasks, 0 not ok" in out,
           "run --wait: results as tasks finish, then a summary", out + err)
    rc, out, err = ctl(env, "--json", "run", "t_sq", "--wait")
    res = json_lines(out)
    tap.ok(rc == 0 and len(res) == 2 and all(RESULT_KEYS <= set(r) for r in res) and
           sorted(r["output"] for r in res) == ["4", "9"] and
           all(r["run"] == 2 and r["mode"] == "thread" for r in res),
           "run --wait --json: one result per line, in the result shape", out + err)

    rc, out, err = ctl(env, "run", "p_sq")
    tap.ok(rc == 0 and "job p_sq: run 1 started (1 task)" in out,
           "run without --wait says which run started", out + err)
    tap.ok(wait_for(lambda: (last_run(env, "p_sq") or {}).get("run") == 1),
           "and the run happens")
    rc, doc, err = ctl_json(env, "run", "p_sq")
    tap.ok(rc == 0 and doc == {"job": "p_sq", "run": 2, "tasks": 1}, "run --json", doc)
    tap.ok(wait_for(lambda: (last_run(env, "p_sq") or {}).get("run") == 2),
           "the second run happens")

    rc, out, err = ctl(env, "show", "t_sq")
    tap.ok(rc == 0 and out.startswith("job t_sq (%s:" % cfg) and
           "plugin" in out and "2, 3" in out and "last run #2 ok" in out and
           "TASK" in out and "ok" in out, "show: definition and last run's results", out)
    doc = show(env, "t_sq")
    results = doc["last_run"]["results"] if doc else []
    tap.ok(doc and doc["definition"]["inputs"] == ["2", "3"] and
           doc["definition"]["file"] == cfg and doc["last_run"]["run"] == 2 and
           [r["output"] for r in results] == ["4", "9"] and
           all(RESULT_KEYS <= set(r) for r in results) and
           "settings" in doc["definition"], "show --json", doc)
    rc, doc, err = ctl_json(env, "show", "off")
    tap.ok(rc == 0 and doc["state"] == "disabled" and doc["last_run"] is None,
           "show: a disabled job", doc)

    rc, out, err = ctl(env, "workers")
    lines = out.splitlines()
    tap.ok(rc == 0 and lines[0].split()[:3] == ["JOB", "MODE", "PID"] and
           any(l.split()[:2] == ["t_sq", "thread"] for l in lines) and
           any(l.split()[:2] == ["p_sq", "process"] for l in lines),
           "workers: threads and processes in a table", out)
    rc, doc, err = ctl_json(env, "workers")
    ws = doc["workers"] if rc == 0 else []
    procs = [w for w in ws if w["job"] == "p_sq"]
    threads = [w for w in ws if w["job"] == "t_sq"]
    tap.ok(len(procs) == 1 and procs[0]["state"] == "idle" and
           procs[0]["tasks_done"] == 2 and procs[0]["rss_bytes"] > 0 and
           procs[0]["cpu_s"] is not None and procs[0]["pid"] != d.pid,
           "workers --json: a process worker with RSS, CPU and tasks done", ws)
    tap.ok(len(threads) == 1 and threads[0]["pid"] == d.pid and
           threads[0]["tid"] and threads[0]["tasks_done"] == 4 and
           threads[0]["state"] == "idle", "workers --json: a thread", ws)
    rc, doc, err = ctl_json(env, "workers", "t_sq")
    tap.ok(rc == 0 and {w["job"] for w in doc["workers"]} == {"t_sq"},
           "workers JOB: only that job's", doc)

    rc, out, err = ctl(env, "history", "t_sq")
    lines = out.splitlines()
    tap.ok(rc == 0 and lines[0].split()[:4] == ["RUN", "STARTED", "TRIGGER", "STATUS"] and
           [l.split()[0] for l in lines[1:]] == ["2", "1"] and "manual" in lines[1],
           "history: a table of runs, newest first", out + err)
    rc, doc, err = ctl_json(env, "history", "t_sq", "-n", "1")
    runs = doc["runs"] if rc == 0 else []
    tap.ok(rc == 0 and doc["job"] == "t_sq" and len(runs) == 1 and runs[0]["run"] == 2 and
           runs[0]["status"] == "ok" and runs[0]["tasks"] == 2 and runs[0]["ok"] == 2 and
           runs[0]["trigger"] == "manual", "history --json -n 1: the last run", doc)

    # Two requests in one write: the second waits for the first's run.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(env.socket)
    s.sendall(b'{"v":1,"cmd":"run","job":"t_sq","wait":true}\n'
              b'{"v":1,"cmd":"show","job":"t_sq"}\n')
    f = s.makefile("rb")
    msgs = [json.loads(f.readline()) for _ in range(5)]
    s.close()
    tap.ok([m["type"] for m in msgs] == ["started", "result", "result", "reply", "reply"]
           and all(m["v"] == 1 for m in msgs) and msgs[0]["run"] == 3 and
           msgs[3]["data"]["failed"] == 0 and msgs[4]["data"]["last_run"]["run"] == 3,
           "pipelined requests are answered in order, streaming first", msgs)
    stop(tap, d)
    tap.ok(not os.path.exists(env.socket), "the socket is removed at exit")


def test_run_wait_failure(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "mixed"; plugin = "crash"; mode = "process"; inputs = ["ok", "exit3"];
    schedule = "@manual"; }""")
    d = start(env, cfg, tap)
    rc, out, err = ctl(env, "run", "mixed", "--wait")
    tap.eq(rc, 3, "run --wait: exit 3 when a task failed")
    tap.ok("task 1 [exit3]: crashed" in out and "1 not ok" in out,
           "the failure is shown", out + err)
    rc, out, err = ctl(env, "--json", "run", "mixed", "--wait")
    res = sorted(json_lines(out), key=lambda r: r.get("index", -1))
    tap.ok(rc == 3 and [r.get("status") for r in res] == ["ok", "crashed"] and
           res[1].get("exit_code") == 3, "run --wait --json: exit 3, statuses", out)
    stop(tap, d)


def test_kill_cancel_process(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "psleep"; plugin = "sleep"; mode = "process"; workers = 2;
    inputs = ["60", "60"]; schedule = "@manual"; kill_grace = "10s"; }""")
    d = start(env, cfg, tap)

    # kill: SIGTERM to both busy workers; their tasks end `killed`.
    tap.eq(ctl(env, "run", "psleep")[0], 0, "run started")
    tap.ok(wait_for(lambda: busy_workers(env, "psleep") == 2), "two workers busy")
    rc, out, err = ctl(env, "kill", "psleep")
    tap.ok(rc == 0 and "SIGTERM sent to 2 workers" in out, "kill: SIGTERM to 2 workers",
           out + err)
    tap.ok(wait_for(lambda: (last_run(env, "psleep") or {}).get("run") == 1),
           "the killed run ends")
    res = last_run(env, "psleep")["results"]
    tap.ok([r["status"] for r in res] == ["killed", "killed"] and
           all(r.get("signal") == 15 for r in res), "its tasks are recorded as killed", res)
    tap.ok(d.count(r"job psleep: SIGTERM sent to 2 workers requested by uid 0") == 1,
           "the log says who asked", d.log()[-10:])
    doc = show(env, "psleep")
    tap.ok(doc["last_control"]["action"] == "kill" and doc["last_control"]["uid"] == 0 and
           doc["last_control"]["signal"] == "SIGTERM", "show records who asked",
           doc["last_control"])

    # kill -KILL, in JSON.
    tap.eq(ctl(env, "run", "psleep")[0], 0, "run again")
    tap.ok(wait_for(lambda: busy_workers(env, "psleep") == 2), "two workers busy again")
    rc, doc, err = ctl_json(env, "kill", "psleep", "-KILL")
    tap.ok(rc == 0 and doc["signal"] == "SIGKILL" and doc["workers"] == 2 and
           len(doc["pids"]) == 2, "kill -KILL --json", doc)
    tap.ok(wait_for(lambda: (last_run(env, "psleep") or {}).get("run") == 2),
           "that run ends too")
    tap.ok([r.get("signal") for r in last_run(env, "psleep")["results"]] == [9, 9],
           "killed by SIGKILL", last_run(env, "psleep"))

    # cancel, while another client waits for the run's results.
    waiter = subprocess.Popen([JOBRUNCTL, "-s", env.socket, "--json", "run", "psleep",
                               "--wait"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    tap.ok(wait_for(lambda: busy_workers(env, "psleep") == 2), "a waited-for run is busy")
    rc, out, err = ctl(env, "cancel", "psleep")
    tap.ok(rc == 0 and "cancelling 2 tasks in 1 run" in out, "cancel", out + err)
    out, err = waiter.communicate(timeout=TIMEOUT)
    res = json_lines(out)
    tap.ok(waiter.returncode == 3 and [r.get("status") for r in res] ==
           ["cancelled", "cancelled"], "the waiting client sees them cancelled; exit 3",
           out + err)
    tap.ok(d.count(r"job psleep: cancel requested by uid 0") == 1,
           "the log says who cancelled")
    rc, doc, err = ctl_json(env, "cancel", "psleep")
    tap.ok(rc == 0 and doc == {"job": "psleep", "runs": 0, "tasks": 0},
           "cancel --json with nothing running", doc)
    rc, out, err = ctl(env, "kill", "psleep")
    tap.ok(rc == 0, "kill with idle workers", out + err)

    # A waiting client that vanishes changes nothing.
    waiter = subprocess.Popen([JOBRUNCTL, "-s", env.socket, "run", "psleep", "--wait"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tap.ok(wait_for(lambda: busy_workers(env, "psleep") == 2), "another waited-for run")
    waiter.kill()
    waiter.wait()
    rc, doc, err = ctl_json(env, "cancel", "psleep")
    tap.ok(rc == 0 and doc["tasks"] == 2, "the run goes on after its client vanished", doc)
    tap.ok(wait_for(lambda: (last_run(env, "psleep") or {}).get("run") == 4),
           "and ends when cancelled")
    stop(tap, d)


def test_kill_cancel_thread(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "tsleep"; plugin = "sleep"; mode = "thread"; workers = 2;
    inputs = ["60", "60"]; schedule = "@manual"; }""")
    d = start(env, cfg, tap)
    tap.eq(ctl(env, "run", "tsleep")[0], 0, "run started")
    tap.ok(wait_for(lambda: busy_workers(env, "tsleep") == 2), "two threads busy")
    rc, doc, err = ctl_json(env, "workers", "tsleep")
    tap.ok(rc == 0 and sorted(w["task"] for w in doc["workers"]) == [0, 1] and
           all(w["run"] == 1 for w in doc["workers"]), "workers: each thread's task", doc)
    rc, out, err = ctl(env, "cancel", "tsleep")
    tap.ok(rc == 0 and "cancelling 2 tasks in 1 run" in out, "cancel", out + err)
    tap.ok(wait_for(lambda: (last_run(env, "tsleep") or {}).get("run") == 1),
           "the cancelled run ends")
    tap.ok([r["status"] for r in last_run(env, "tsleep")["results"]] ==
           ["cancelled", "cancelled"], "its tasks are recorded as cancelled")

    tap.eq(ctl(env, "run", "tsleep")[0], 0, "run again")
    tap.ok(wait_for(lambda: busy_workers(env, "tsleep") == 2), "two threads busy again")
    rc, out, err = ctl(env, "kill", "tsleep", "-9")
    tap.ok(rc == 0 and "thread mode" in out and "cancelling 2 tasks" in out,
           "kill in thread mode cancels", out + err)
    tap.ok(wait_for(lambda: (last_run(env, "tsleep") or {}).get("run") == 2),
           "that run ends")
    tap.ok([r["status"] for r in last_run(env, "tsleep")["results"]] ==
           ["cancelled", "cancelled"], "recorded as cancelled")
    tap.ok(d.count(r"job tsleep: kill \(SIGKILL\) requested by uid 0") == 1,
           "the log says who asked", d.log()[-10:])
    rc, doc, err = ctl_json(env, "kill", "tsleep")
    tap.ok(rc == 0 and doc["mode"] == "thread" and doc["tasks"] == 0,
           "kill --json in thread mode, nothing running", doc)
    stop(tap, d)


def test_permissions(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "job"; plugin = "square"; mode = "thread"; inputs = [5];
    schedule = "@manual"; }""")
    d = start(env, cfg, tap)
    st_dir = os.stat(os.path.dirname(env.socket))
    st_sock = os.lstat(env.socket)
    tap.ok(stat.S_IMODE(st_dir.st_mode) == 0o750 and st_dir.st_gid == os.getegid(),
           "the socket's directory is 0750, the daemon's group", oct(st_dir.st_mode))
    tap.ok(stat.S_ISSOCK(st_sock.st_mode) and stat.S_IMODE(st_sock.st_mode) == 0o660,
           "the socket is 0660", oct(st_sock.st_mode))
    rc, out, err = ctl(env, "status", prefix=NOBODY)
    tap.ok(rc == 1 and "Permission denied" in err,
           "another uid cannot even reach the socket", err)

    # Loosened modes: the peer check still refuses.
    os.chmod(os.path.dirname(env.socket), 0o755)
    os.chmod(env.socket, 0o666)
    for args in (["status"], ["show", "job"], ["run", "job"], ["reload"]):
        rc, out, err = ctl(env, *args, prefix=NOBODY)
        tap.ok(rc == 1 and "permission denied" in err and out == "",
               "loosened modes: '%s' is refused to another uid" % args[0], err)
    tap.ok(d.count(r"control: refused 'run' from uid 65534") == 1,
           "a refusal is logged with the uid", d.log()[-10:])
    tap.eq(show(env, "job")["last_run"], None, "a refused run did not run")
    stop(tap, d)


def test_control_group(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "job"; plugin = "square"; mode = "thread"; inputs = [5];
    schedule = "@manual"; }""", extra='control_group = "users";\n')
    d = start(env, cfg, tap)
    st_dir = os.stat(os.path.dirname(env.socket))
    st_sock = os.lstat(env.socket)
    tap.ok(st_dir.st_gid == 100 and st_sock.st_gid == 100,
           "directory and socket belong to control_group")
    member = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=100"]
    rc, out, err = ctl(env, "run", "job", "--wait", prefix=member)
    tap.ok(rc == 0 and "ok 25" in out, "a member (supplementary group) may run", out + err)
    primary = ["setpriv", "--reuid=nobody", "--regid=100", "--clear-groups"]
    rc, out, err = ctl(env, "--json", "reload", prefix=primary)
    tap.ok(rc == 0, "a member (primary group) may reload", out + err)
    rc, out, err = ctl(env, "status", prefix=NOBODY)
    tap.ok(rc == 1, "a non-member may not", err)
    stop(tap, d)


def test_readonly(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "job"; plugin = "sleep"; mode = "process"; inputs = ["60"];
    schedule = "@manual"; settings = { }; }""", extra="control_readonly = true;\n")
    d = start(env, cfg, tap)
    st_dir = os.stat(os.path.dirname(env.socket))
    st_sock = os.lstat(env.socket)
    tap.ok(stat.S_IMODE(st_dir.st_mode) == 0o755 and
           stat.S_IMODE(st_sock.st_mode) == 0o666,
           "control_readonly: every user can reach the socket (0755, 0666)")
    for args in (["status"], ["show", "job"], ["workers"], ["history", "job"],
                 ["version"]):
        rc, out, err = ctl(env, *args, prefix=NOBODY)
        tap.ok(rc == 0 and out, "control_readonly: another uid may '%s'" % args[0], err)
    rc, doc, err = ctl_json(env, "show", "job", prefix=NOBODY)
    tap.ok(rc == 0 and "settings" not in doc["definition"] and
           "env" not in doc["definition"], "but sees no settings or environment", doc)
    tap.eq(ctl(env, "run", "job")[0], 0, "root runs the job")
    tap.ok(wait_for(lambda: busy_workers(env, "job") == 1), "its worker is busy")
    for args in (["run", "job"], ["cancel", "job"], ["kill", "job"], ["reload"]):
        rc, out, err = ctl(env, *args, prefix=NOBODY)
        tap.ok(rc == 1 and "permission denied" in err and "control_readonly" in err,
               "control_readonly: another uid may not '%s'" % args[0], err)
    tap.ok(d.count(r"control: refused 'kill' from uid 65534") == 1,
           "refusals are logged with the uid")
    tap.eq(busy_workers(env, "job"), 1, "nothing changed: the run goes on")
    rc, doc, err = ctl_json(env, "status")
    tap.ok(len(doc["jobs"][0]["running"]) == 1 and doc["jobs"][0]["running"][0]["run"] == 1,
           "one run only", doc)
    tap.eq(ctl(env, "cancel", "job")[0], 0, "root cancels it")
    stop(tap, d)


def test_stale_and_live_socket(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "job"; plugin = "square"; mode = "thread"; inputs = [5];
    schedule = "@manual"; }""")
    os.makedirs(os.path.dirname(env.socket), 0o750)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(env.socket)
    s.close()       # bound, never listened, closed: a stale socket
    tap.ok(stat.S_ISSOCK(os.lstat(env.socket).st_mode), "a stale socket is there")
    d = start(env, cfg, tap)
    tap.ok(d.count(r"removed a stale socket") == 1, "the stale socket is replaced")
    rc, out, err = run([JOBRUND, "-c", cfg])
    tap.ok(rc == 1 and env.socket in err and "another jobrund is running" in err,
           "a second jobrund on a live socket: exit 1, naming the socket", err)
    tap.eq(ctl(env, "status")[0], 0, "the first one still answers")
    stop(tap, d)
    if os.path.lexists(env.socket):
        os.unlink(env.socket)
    with open(env.socket, "w") as f:
        f.write("not a socket\n")
    rc, out, err = run([JOBRUND, "-c", cfg])
    tap.ok(rc == 1 and "not a socket" in err, "a file in the socket's place: exit 1", err)
    tap.ok(os.path.isfile(env.socket), "and it is left alone")


def test_many_clients(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "job"; plugin = "square"; mode = "thread"; inputs = [5];
    schedule = "@manual"; }""")
    os.environ["JOBRUND_CTL_IDLE_TIMEOUT"] = "1"
    try:
        d = start(env, cfg, tap)
    finally:
        del os.environ["JOBRUND_CTL_IDLE_TIMEOUT"]

    # Silent clients, and one that never finishes its request.
    silent = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(env.socket)
        silent.append(s)
    silent[0].sendall(b'{"v":1,"cmd":"sta')
    rc, out, err = ctl(env, "run", "job", "--wait")
    tap.ok(rc == 0 and "ok 25" in out, "silent clients do not block others", out + err)

    procs = [subprocess.Popen([JOBRUNCTL, "-s", env.socket, "--json", "status"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(100)]
    good = 0
    for p in procs:
        out, err = p.communicate(timeout=TIMEOUT)
        try:
            good += p.returncode == 0 and json.loads(out)["jobs"][0]["name"] == "job"
        except ValueError:
            pass
    tap.eq(good, 100, "100 clients at once are all served")

    def closed(s):
        s.settimeout(TIMEOUT)
        try:
            return s.recv(1) == b""
        except OSError:
            return True
    tap.ok(all(closed(s) for s in silent),
           "silent and half-sent clients are dropped after the idle timeout")
    for s in silent:
        s.close()
    tap.ok(d.wait_log(r"sent no request for 1s: dropped", n=20), "and that is logged")
    tap.eq(ctl(env, "status")[0], 0, "still serving")
    stop(tap, d)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "job"; plugin = "square"; mode = "thread"; inputs = [5];
    schedule = "@manual"; }""")
    with open(cfg) as f:
        text = f.read().replace('log_level = "info"', 'log_level = "debug"')
    with open(cfg, "w") as f:
        f.write(text)
    d = start(env, cfg, tap)
    conns = exhaust_descriptors(env, d.pid)
    tap.ok(d.wait_log(r"control socket: accept: Too many open files: not accepting"),
           "EMFILE: it stops accepting", d.log()[-10:])
    tap.ok(d.wait_log(r"still not accepting \(retry 2\)"), "and retries on a timer")
    cpu0 = cpu_seconds(d.pid)
    tap.ok(d.wait_log(r"still not accepting \(retry 4\)"), "retrying still")
    used = cpu_seconds(d.pid) - cpu0
    tap.ok(used < 0.5, "without spinning (%.2fs of CPU in two retries)" % used)
    for s in conns:
        s.close()
    tap.ok(wait_for(lambda: ctl(env, "status")[0] == 0), "serving again once fds free up")
    tap.ok(d.count(r"accepting connections again") >= 1, "which is logged")
    stop(tap, d)


def raw_request(sock, payload):
    """Send PAYLOAD, return the next message (or None at EOF)."""
    sock.sendall(payload)
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def test_bad_input(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "job"; plugin = "square"; mode = "thread"; inputs = [5];
    schedule = "@manual"; }""")
    d = start(env, cfg, tap)

    for args, what in ((["show", "nosuch"], "show"), (["run", "nosuch", "--wait"], "run"),
                       (["cancel", "nosuch"], "cancel"), (["kill", "nosuch"], "kill"),
                       (["history", "nosuch"], "history"), (["workers", "nosuch"], "workers")):
        rc, out, err = ctl(env, *args)
        tap.ok(rc == 1 and "no such job 'nosuch'" in err and out == "",
               "%s of an unknown job: exit 1, clear message" % what, err)
    for args in (["frobnicate"], ["show"], ["run"], ["status", "extra"],
                 ["kill", "job", "-NOSUCHSIG"], ["history", "job", "-n", "0"],
                 ["run", "job", "--bogus"], []):
        rc, out, err = ctl(env, *args)
        tap.ok(rc == 2 and "usage:" in err, "usage error %r: exit 2" % args, err)

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(env.socket)
    for payload, want in ((b"this is not json\n", "malformed request"),
                          (b"[1, 2]\n", "not a JSON object"),
                          (b'{"cmd":"status"}\n', "no protocol version"),
                          (b'{"v":99,"cmd":"status"}\n', "protocol version 99"),
                          (b'{"v":1}\n', "no command"),
                          (b'{"v":1,"cmd":"frobnicate"}\n', "unknown command"),
                          (b'{"v":1,"cmd":"kill","job":"job","signal":999}\n',
                           "not a signal"),
                          (b'{"v":1,"cmd":"show"}\n', "needs a job name")):
        m = raw_request(s, payload)
        tap.ok(m and m["v"] == 1 and m["type"] == "reply" and m["ok"] is False and
               want in m["error"], "bad request %r: %s" % (payload[:30], want), m)
    m = raw_request(s, b'{"v":1,"cmd":"version"}\n')
    tap.ok(m and m["ok"] is True, "the connection survives bad requests", m)
    m = raw_request(s, b"x" * (70 * 1024))
    tap.ok(m and m["ok"] is False and "request too large" in m["error"],
           "an oversized request is refused", m)
    s.shutdown(socket.SHUT_WR)
    tap.eq(s.recv(1), b"", "and the connection closed")
    s.close()
    rc, doc, err = ctl_json(env, "status")
    tap.ok(rc == 0 and doc["jobs"][0]["last_run"] is None and
           doc["jobs"][0]["running"] == [], "nothing changed: no run", doc)
    tap.eq(d.count(r"run \d+ started"), 0, "nothing ran")
    stop(tap, d)


def test_reload(tap, env):
    use_run_dir(env)
    cfg = env.config("""
  { name = "one"; plugin = "square"; mode = "thread"; schedule = "@manual"; }""")
    d = start(env, cfg, tap)
    env.config("""
  { name = "one"; plugin = "square"; mode = "thread"; schedule = "@manual"; },
  { name = "two"; plugin = "square"; mode = "thread"; schedule = "@manual"; }""")
    rc, out, err = ctl(env, "reload")
    tap.ok(rc == 0 and out.strip() == "reloaded %s (2 jobs)" % cfg, "reload", out + err)
    rc, doc, err = ctl_json(env, "status")
    tap.eq(sorted(j["name"] for j in doc["jobs"]), ["one", "two"], "the new job is there")
    env.config("""
  { name = "one"; plugin = "square"; mode = "thread"; workers = 0; },
  { name = "three"; plugin = "square"; mode = "thread"; retries = -1; }""")
    rc, out, err = ctl(env, "reload")
    lines = err.splitlines()
    tap.ok(rc == 1 and any(l.startswith(cfg + ":7: ") and "workers" in l for l in lines) and
           any(l.startswith(cfg + ":8: ") and "retries" in l for l in lines) and
           "the running configuration is unchanged" in lines[-1],
           "a broken reload: exit 1, every error as FILE:LINE", err)
    rc, out, err = ctl(env, "--json", "reload")
    tap.ok(rc == 1 and out == "" and cfg + ":7:" in err, "the same with --json", err)
    rc, doc, err = ctl_json(env, "status")
    tap.eq(sorted(j["name"] for j in doc["jobs"]), ["one", "two"], "nothing changed")
    env.config("""
  { name = "one"; plugin = "square"; mode = "thread"; schedule = "@manual"; }""")
    rc, doc, err = ctl_json(env, "reload")
    tap.ok(rc == 0 and doc == {"config": cfg, "jobs": 1}, "reload --json", doc)
    stop(tap, d)


main([test_commands_both_forms, test_run_wait_failure, test_kill_cancel_process,
      test_kill_cancel_thread, test_permissions, test_control_group, test_readonly,
      test_stale_and_live_socket, test_many_clients, test_out_of_descriptors,
      test_bad_input, test_reload])
