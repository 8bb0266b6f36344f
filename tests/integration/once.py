"""jobrund --once in both modes: results, errors, crashes, exit codes.

Runs the real jobrund on temporary configs and checks the JSON lines a
user would read, and that no worker process is left behind.
"""

import os

from jrtest import main, once, processes_matching

RESULT_KEYS = {"job", "run", "index", "input", "status", "output", "mode",
               "pid", "started", "wall_s", "cpu_s"}


def job(name, plugin, mode, workers=1, inputs=None, extra=""):
    text = '{ name = "%s"; plugin = "%s"; mode = "%s"; workers = %d; ' % (
        name, plugin, mode, workers)
    if inputs is not None:
        text += "inputs = ( %s ); " % ", ".join(inputs)
    return text + extra + " }"


def test_square_both_modes(tap, env):
    nums = [str(i) for i in range(10)]
    cfg = env.config(",\n".join([
        job("sq_thread", "square", "thread", 4, nums),
        job("sq_process", "square", "process", 2, nums)]))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "square in both modes exits 0")
    tap.eq(len(res), 20, "one result per input per job")
    for name, mode in (("sq_thread", "thread"), ("sq_process", "process")):
        mine = [r for r in res if r.get("job") == name]
        tap.eq([r.get("output") for r in mine], [str(i * i) for i in range(10)],
               "%s: outputs are the squares" % name)
        tap.eq([r.get("input") for r in mine], nums, "%s: inputs as written" % name)
        tap.ok(all(r.get("status") == "ok" and r.get("mode") == mode
                   for r in mine), "%s: every task ok in %s mode" % (name, mode),
               mine)
        tap.ok(all(RESULT_KEYS <= set(r) for r in mine),
               "%s: results carry every contract key" % name, mine[:1])
        tap.ok(all(r["run"] == 1 for r in mine), "%s: all in run 1" % name)
    pids = {r["pid"] for r in res if r.get("job") == "sq_process"}
    tpids = {r["pid"] for r in res if r.get("job") == "sq_thread"}
    tap.ok(1 <= len(pids) <= 2, "process mode used at most 2 workers", pids)
    tap.ok(len(tpids) == 1 and not (pids & tpids),
           "thread mode ran in the daemon, process mode elsewhere", (pids, tpids))
    tap.eq(processes_matching("jobrund-worker: sq_process"), [],
           "no worker left after --once")


def test_cpu_exact(tap, env):
    ns = [0, 1, 10, 1000000, 5000000]
    cfg = env.config(",\n".join([
        job("cpu_t", "cpu", "thread", 2, [str(n) for n in ns]),
        job("cpu_p", "cpu", "process", 2, [str(n) for n in ns])]))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "cpu exits 0")
    want = [str(sum(i * i for i in range(n))) for n in ns[:3]] + \
        ["333332833333500000", "41666654166667500000"]
    for name in ("cpu_t", "cpu_p"):
        tap.eq([r.get("output") for r in res if r.get("job") == name], want,
               "%s: exact sums as Python prints them (no 64-bit overflow)" % name)
    big = [r for r in res if r.get("input") == "5000000"]
    tap.ok(all(r["cpu_s"] > 0 for r in big), "CPU time is measured", big)


def test_bad_inputs_fail_alone(tap, env):
    cfg = env.config(",\n".join([
        job("bad_t", "cpu", "thread", 2, ['"abc"', "-5", "100"]),
        job("bad_p", "cpu", "process", 1, ['"abc"', "-5", "100"])]))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "a failed task makes --once exit 3")
    for name in ("bad_t", "bad_p"):
        mine = [r for r in res if r.get("job") == name]
        tap.eq([r.get("status") for r in mine], ["failed", "failed", "ok"],
               "%s: bad inputs fail, the good one runs" % name)
        tap.ok("abc" in mine[0].get("error", ""), "%s: the error names the input"
               % name, mine[0])
        tap.ok("-5" in mine[1].get("error", ""), "%s: -5 is refused by name" % name,
               mine[1])
        tap.eq(mine[2].get("output"), str(sum(i * i for i in range(100))),
               "%s: the good input's result is there" % name)


def test_selected_and_unknown_jobs(tap, env):
    cfg = env.config(",\n".join([
        job("one", "square", "thread", 1, ["2"]),
        job("two", "square", "thread", 1, ["3"]),
        job("off", "square", "thread", 1, ["4"], "enabled = false;")]))
    rc, res, err = once(cfg, "two")
    tap.eq((rc, [r["job"] for r in res]), (0, ["two"]), "--once JOB runs only JOB")
    rc, res, err = once(cfg)
    tap.eq(sorted(r["job"] for r in res), ["one", "two"],
           "--once without names runs the enabled jobs")
    rc, res, err = once(cfg, "off")
    tap.eq([r.get("output") for r in res], ["16"], "a disabled job runs when named")
    rc, res, err = once(cfg, "nosuch")
    tap.eq(rc, 2, "an unknown job name is a usage error (2)")
    tap.ok("nosuch" in err, "and the message names it", err)


def test_no_inputs_and_empty_inputs(tap, env):
    cfg = env.config(",\n".join([
        '{ name = "noin"; plugin = "exec"; mode = "process"; '
        'settings = { command = ["echo", "plain"]; }; }',
        job("empty", "square", "thread", 1, [])]))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "jobs without inputs run")
    tap.eq([(r["job"], r["input"], r["output"]) for r in res],
           [("noin", None, "plain")],
           "no `inputs`: one task with a null input; `inputs = []`: none")


def test_exec_both_modes(tap, env):
    jobs = []
    for mode in ("thread", "process"):
        jobs.append('{ name = "ex_%s"; plugin = "exec"; mode = "%s"; workers = 2;'
                    ' inputs = ["a b", "c"]; settings = { command = ["echo", "x"]; }; }'
                    % (mode, mode))
        jobs.append('{ name = "exfail_%s"; plugin = "exec"; mode = "%s";'
                    ' settings = { command = ["sh", "-c", "echo oops >&2; exit 3"]; }; }'
                    % (mode, mode))
        jobs.append('{ name = "exmissing_%s"; plugin = "exec"; mode = "%s";'
                    ' settings = { command = ["/nonexistent/cmd"]; }; }' % (mode, mode))
    cfg = env.config(",\n".join(jobs))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "exec: failing commands make --once exit 3")
    by = {}
    for r in res:
        by.setdefault(r["job"], []).append(r)
    for mode in ("thread", "process"):
        tap.eq([r["output"] for r in by.get("ex_" + mode, [])], ["x a b", "x c"],
               "exec %s: the input is the last argument, stdout the output" % mode)
        f = by.get("exfail_" + mode, [{}])[0]
        tap.ok(f.get("status") == "failed" and "3" in f.get("error", "")
               and "oops" in f.get("error", ""),
               "exec %s: exit status 3 fails the task, with its stderr" % mode, f)
        m = by.get("exmissing_" + mode, [{}])[0]
        tap.ok(m.get("status") == "failed" and "/nonexistent/cmd" in m.get("error", "")
               and "No such file" in m.get("error", ""),
               "exec %s: a command that cannot start says why" % mode, m)


def test_process_crashes(tap, env):
    cfg = env.config(job("crashy", "crash", "process", 1,
                         ['"ok"', '"segv"', '"abort"', '"exit3"', '"fine"']))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "crashes make --once exit 3")
    st = [(r.get("input"), r.get("status")) for r in res]
    tap.eq(st, [("ok", "ok"), ("segv", "crashed"), ("abort", "crashed"),
                ("exit3", "crashed"), ("fine", "ok")],
           "each crash fails only its own task; the rest run")
    seg = res[1] if len(res) > 1 else {}
    tap.ok(seg.get("signal") == 11 and seg.get("signal_name") == "SIGSEGV",
           "a segfault is recorded with its signal", seg)
    ab = res[2] if len(res) > 2 else {}
    tap.eq(ab.get("signal"), 6, "an abort is recorded as SIGABRT")
    ex = res[3] if len(res) > 3 else {}
    tap.eq(ex.get("exit_code"), 3, "an exit is recorded with its code")
    tap.ok(len({r["pid"] for r in res}) >= 4, "crashed workers were replaced",
           [r["pid"] for r in res])
    tap.eq(processes_matching("jobrund-worker: crashy"), [], "no worker left")


def test_timeouts(tap, env):
    cfg = env.config(",\n".join([
        job("slow_t", "sleep", "thread", 2, ["30", "0.01"], 'timeout = "300ms";'),
        job("slow_p", "sleep", "process", 2, ["30", "0.01"], 'timeout = "300ms";'),
        job("hang_p", "crash", "process", 1, ['"hang"', '"ok"'],
            'timeout = "300ms"; kill_grace = "200ms";')]))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "timeouts make --once exit 3")
    for name in ("slow_t", "slow_p", "hang_p"):
        mine = [r for r in res if r["job"] == name]
        tap.eq([r["status"] for r in mine], ["timeout", "ok"],
               "%s: the slow task times out, the other finishes" % name)
        tap.ok(mine and mine[0]["wall_s"] < 10, "%s: promptly" % name, mine[:1])
    hang = [r for r in res if r["job"] == "hang_p"]
    tap.ok(hang and hang[0].get("signal") == 9,
           "a worker ignoring SIGTERM is SIGKILLed after kill_grace", hang[:1])
    tap.eq(processes_matching("jobrund-worker: hang_p"), [], "no worker left")


def test_plugin_output_does_not_corrupt_results(tap, env):
    # What a worker prints goes to the log, never into the JSON stream.
    cfg = env.config(job("noisy", "crash", "process", 1, ['"print"', '"ok"']))
    rc, res, err = once(cfg)
    tap.ok(all("unparsable" not in r for r in res),
           "worker stdout does not reach --once's stdout", res)
    tap.eq([r.get("status") for r in res], ["ok", "ok"], "both tasks ran")


def test_sigint_cancels(tap, env):
    import signal
    import subprocess
    import json
    from jrtest import JOBRUND, wait_for
    cfg = env.config(",\n".join([
        job("int_t", "sleep", "thread", 1, ["60"]),
        job("int_p", "crash", "process", 1, ['"hang"'], 'kill_grace = "200ms";')]),
        extra="shutdown_grace = 1.0;\n")
    p = subprocess.Popen([JOBRUND, "-c", cfg, "--once"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    tap.ok(wait_for(lambda: processes_matching("jobrund-worker: int_p")),
           "the process worker is running")
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    tap.eq(p.returncode, 3, "SIGINT during --once: exit 3")
    res = sorted((json.loads(l) for l in out.splitlines()), key=lambda r: r["job"])
    tap.eq([(r["job"], r["status"]) for r in res],
           [("int_p", "cancelled"), ("int_t", "cancelled")],
           "every task still reports, as cancelled")
    tap.eq(processes_matching("jobrund-worker: int_p"), [],
           "a worker ignoring SIGTERM is gone too")


main([test_sigint_cancels, test_square_both_modes, test_cpu_exact, test_bad_inputs_fail_alone,
      test_selected_and_unknown_jobs, test_no_inputs_and_empty_inputs,
      test_exec_both_modes, test_process_crashes, test_timeouts,
      test_plugin_output_does_not_corrupt_results])
