"""The python plugin: results compared with what CPython itself returns for
the same calls, in both modes; exceptions as failed tasks; cancellation of
running Python code; bad settings as FILE:LINE errors at -t time.

The functions are in tests/python/jr_examples.py.  The reference CPython is
the one the plugin embeds (its sys.executable, asked through the plugin),
else /usr/bin/python3, else whatever runs this script.
"""

import json
import os
import re
import signal
import subprocess
import sys

from jrtest import JOBRUND, TIMEOUT, main, once, run, wait_for

SRCDIR = os.environ.get("JR_SRCDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
PYDIR = os.path.join(SRCDIR, "tests", "python")

# Calls compared with CPython: (function, inputs).
CASES = [
    ("square", ["0", "7", "-12", "123456789"]),
    ("fourth_power", ["3", "-5", "99999"]),
    ("sum_squares", ["0", "10", "200000"]),
    ("nap", ["0", "0.01"]),
    ("identity", ["plain", "h\u00e9llo \u2713", ""]),
    ("extensions", ["2.5"]),
    ("versions", ["x"]),
    ("fail", ["x", "42"]),
    ("fail_custom", ["y"]),
    ("square", ["not a number"]),
]


def quote(s):
    """A libconfig string literal (UTF-8 as is: it has no \\u escapes)."""
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def pyjob(name, mode, function, inputs=None, workers=2, extra="", settings=""):
    ins = ""
    if inputs is not None:
        ins = "inputs = ( %s ); " % ", ".join(quote(i) for i in inputs)
    return ('{ name = "%s"; plugin = "python"; mode = "%s"; workers = %d; %s%s\n'
            '    settings = { module = "jr_examples"; function = "%s"; path = "%s"; %s }; }'
            % (name, mode, workers, ins, extra, function, PYDIR, settings))


def reference_python(env):
    """The embedded interpreter's executable, if the plugin can tell."""
    cfg = env.config(pyjob("exe", "thread", "executable", ["x"]), name="exe.conf")
    rc, res, err = once(cfg)
    for cand in ([r.get("output") for r in res if r.get("status") == "ok"] +
                 ["/usr/bin/python3", sys.executable]):
        if cand and os.access(cand, os.X_OK):
            return cand
    return sys.executable


def cpython_says(python, cases):
    """Run each call in CPython: {(function, input): ("ok", str(result)) or
    ("failed", "Type: message")}."""
    script = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import jr_examples
out = []
for fn, arg in json.loads(sys.stdin.read()):
    try:
        out.append(["ok", str(getattr(jr_examples, fn)(arg))])
    except Exception as e:
        t = type(e)
        name = t.__qualname__ if t.__module__ == "builtins" else \
            "%s.%s" % (t.__module__, t.__qualname__)
        out.append(["failed", "%s: %s" % (name, e)])
print(json.dumps(out))
"""
    calls = [(fn, arg) for fn, args in cases for arg in args]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    p = subprocess.run([python, "-I", "-c", script, PYDIR], input=json.dumps(calls),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120, env=env)
    if p.returncode != 0:
        raise RuntimeError("reference CPython failed: %s" % p.stderr)
    return dict(zip(calls, (tuple(x) for x in json.loads(p.stdout))))


def test_results_match_cpython(tap, env):
    python = reference_python(env)
    tap.diag("reference CPython: %s" % python)
    want = cpython_says(python, CASES)
    jobs = []
    for i, (fn, args) in enumerate(CASES):
        for mode in ("thread", "process"):
            jobs.append(pyjob("c%d_%s" % (i, mode), mode, fn, args))
    cfg = env.config(",\n".join(jobs))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "--once exits 3: some calls raise")
    for i, (fn, args) in enumerate(CASES):
        for mode in ("thread", "process"):
            got = [r for r in res if r.get("job") == "c%d_%s" % (i, mode)]
            tap.eq(len(got), len(args), "%s %s: one result per input" % (fn, mode))
            for r in got:
                arg = args[r.get("index", 0)]
                ws, wv = want[(fn, arg)]
                if ws == "ok":
                    ok = r.get("status") == "ok" and r.get("output") == wv
                else:
                    # The plugin adds where it was raised.
                    ok = (r.get("status") == "failed" and
                          r.get("error", "").startswith(wv + " (at ") and
                          "jr_examples.py:" in r.get("error", ""))
                tap.ok(ok, "%s(%r) %s: %s %r, as in CPython" % (fn, arg, mode, ws, wv),
                       json.dumps(r) + "\n" + err)


def test_no_input_and_output(tap, env):
    cfg = env.config(",\n".join([
        pyjob("none_t", "thread", "nothing"),
        pyjob("none_p", "process", "nothing"),
        pyjob("shout", "thread", "shout", ["hey", "you"])]))
    rc, out, err = run([JOBRUND, "-c", cfg, "--once"])
    lines = out.splitlines()
    try:
        res = [json.loads(l) for l in lines]
    except ValueError:
        res = []
    tap.ok(len(res) == 4, "print() in thread mode does not reach --once's "
           "stdout: every line is a result", out)
    tap.eq(rc, 0, "every task succeeds")
    for job in ("none_t", "none_p"):
        tap.eq([(r["status"], r["output"]) for r in res if r.get("job") == job],
               [("ok", "None")], "%s: a job without inputs calls function() "
               "and gets str(None)" % job)
    tap.eq(sorted(r["output"] for r in res if r.get("job") == "shout"),
           ["HEY", "YOU"], "shout returns its results")
    tap.ok("shouting hey" in err and "shouting you" in err,
           "and what it printed went to stderr", err)


def test_where_tasks_run(tap, env):
    cfg = env.config(",\n".join([
        pyjob("w_t", "thread", "where", ["a", "b", "c", "d"]),
        pyjob("w_p", "process", "where", ["a", "b", "c", "d"])]))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "where() runs in both modes")
    for job in ("w_t", "w_p"):
        got = [r for r in res if r.get("job") == job]
        tap.ok(len(got) == 4 and all(r.get("output", "").split(":")[0] == str(r.get("pid"))
                                     for r in got),
               "%s: the function ran in the process the result names" % job,
               json.dumps(got))
    pids_t = {r.get("pid") for r in res if r.get("job") == "w_t"}
    pids_p = {r.get("pid") for r in res if r.get("job") == "w_p"}
    tap.ok(len(pids_t) == 1 and not (pids_t & pids_p),
           "thread mode runs in the daemon, process mode in workers",
           "%r %r" % (pids_t, pids_p))


def test_cancel_running_python(tap, env):
    cfg = env.config(",\n".join([
        pyjob("spin_t", "thread", "spin_or_echo", ["spin", "a", "b"], workers=1,
              extra='timeout = "500ms";'),
        pyjob("spin_p", "process", "spin_or_echo", ["spin", "a"], workers=1,
              extra='timeout = "500ms"; kill_grace = "30s";'),
        pyjob("swallow_t", "thread", "swallow", ["x"], workers=1,
              extra='timeout = "300ms";'),
        pyjob("nap_t", "thread", "nap", ["1"], workers=1,
              extra='timeout = "200ms";')]))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "--once ends although Python code spins forever")

    def of(job):
        return [(r.get("status"), r.get("output"), r.get("error", ""))
                for r in res if r.get("job") == job]

    got = of("spin_t")
    tap.ok(len(got) == 3 and got[0][0] == "timeout" and
           "jobrund.Cancelled" in got[0][2],
           "thread mode: a spinning function is interrupted at the timeout "
           "by jobrund.Cancelled", json.dumps(got))
    tap.eq([g[:2] for g in got[1:]], [("ok", "a"), ("ok", "b")],
           "thread mode: the same thread then runs the next tasks cleanly")
    got = of("spin_p")
    tap.ok(len(got) == 2 and got[0][0] == "timeout" and got[1][:2] == ("ok", "a"),
           "process mode: a spinning function times out, the next task runs",
           json.dumps(got))
    got = of("swallow_t")
    tap.ok(len(got) == 1 and got[0][0] == "timeout" and
           "jobrund.Cancelled did not stop it" in got[0][2],
           "a function that swallows Cancelled still ends as a timeout",
           json.dumps(got))
    got = of("nap_t")
    tap.ok(len(got) == 1 and got[0][0] == "timeout",
           "thread mode: time.sleep past the timeout ends as a timeout "
           "(when the sleep returns)", json.dumps(got))


def test_cancel_on_sigint(tap, env):
    flags = [os.path.join(env.dir, "started-%d" % i) for i in range(2)]
    cfg = env.config(pyjob("sig", "thread", "spin_flagged", flags, workers=2))
    p = subprocess.Popen([JOBRUND, "-c", cfg, "--once"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        started = wait_for(lambda: all(os.path.exists(f) for f in flags))
        tap.ok(started, "both threads are inside the spinning function")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    tap.eq(p.returncode, 3, "SIGINT ends --once (exit 3)")
    tap.ok(len(res) == 2 and all(r.get("status") == "cancelled" and
                                 "jobrund.Cancelled" in r.get("error", "")
                                 for r in res),
           "thread mode: SIGINT cancels both running calls by raising "
           "jobrund.Cancelled in them", out + err)


def test_bad_settings(tap, env):
    def job(name, settings):
        return ('{ name = "%s"; plugin = "python"; mode = "thread"; inputs = [ "1" ];\n'
                '    settings = {\n%s\n    }; }' % (name, settings))
    path = 'path = "%s";' % PYDIR
    jobs = [
        job("nomodule", '      module = "jr_no_such_module"; # M1\n'
                        '      function = "f"; %s' % path),
        job("broken", '      module = "jr_broken"; # M2\n'
                      '      function = "f"; %s' % path),
        job("notcallable", '      module = "jr_examples"; %s\n'
                           '      function = "NOT_CALLABLE"; # F1' % path),
        job("nofunction", '      module = "jr_examples"; %s\n'
                          '      function = "no_such_function"; # F2' % path),
        job("badname", '      module = "jr_examples"; %s\n'
                       '      function = "1up"; # F3' % path),
        job("badpath", '      module = "jr_examples"; function = "square";\n'
                       '      path = "%s/nowhere"; # P1' % PYDIR),
        job("unknown", '      module = "jr_examples"; function = "square"; %s\n'
                       '      colour = "red"; # U1' % path),
        job("nomod", '      function = "square"; # N1'),
        job("good", '      module = "jr_examples"; function = "square"; %s' % path),
        job("good2", '      module = "jr_examples"; function = "fourth_power"; %s' % path),
    ]
    cfg = env.config(",\n".join(jobs))
    with open(cfg) as f:
        text = f.read().splitlines()

    def line_of(marker):
        return next(i + 1 for i, l in enumerate(text) if marker in l)

    rc, out, err = run([JOBRUND, "-c", cfg, "-t"])
    tap.eq(rc, 1, "-t fails on bad python settings")
    lines = err.splitlines()
    for job_name, marker, words in (
            ("nomodule", "# M1", ["jr_no_such_module", "ModuleNotFoundError"]),
            ("broken", "# M2", ["RuntimeError: jr_broken cannot be imported",
                                "jr_broken.py:3"]),
            ("notcallable", "# F1", ["not callable", "int"]),
            ("nofunction", "# F2", ["no_such_function", "AttributeError"]),
            ("badname", "# F3", ["not a Python name"]),
            ("badpath", "# P1", ["nowhere"]),
            ("unknown", "# U1", ["colour"])):
        hit = [l for l in lines if "'%s'" % job_name in l]
        want = "%s:%d: " % (cfg, line_of(marker))
        tap.ok(hit and hit[0].startswith(want) and all(w in hit[0] for w in words),
               "%s: reported at %s naming %s" % (job_name, want, ", ".join(words)), err)
    hit = [l for l in lines if "'nomod'" in l]
    tap.ok(hit and re.match(re.escape(cfg) + r":\d+: .*settings\.module", hit[0]),
           "a missing module is reported with the job's line", err)
    tap.ok(not any("'good" in l for l in lines),
           "the good jobs are not blamed (several python jobs in one -t)", err)

    good = env.config(",\n".join(jobs[-2:]), name="good.conf")
    rc, out, err = run([JOBRUND, "-c", good, "-t"])
    tap.eq((rc, out.strip()), (0, "%s: configuration OK" % good),
           "-t accepts two python jobs")


def test_bench_sees_the_gil(tap, env):
    """--bench on pure-Python CPU work: the threads take turns on the GIL,
    and the advice says so; their hand-overs cost CPU, which --bench does
    not take for CPUs of another speed."""
    cfg = env.config(pyjob("gil", "thread", "sum_squares", ["1000000"] * 4),
                     name="gil.conf")
    rc, out, err = run([JOBRUND, "-c", cfg, "--bench", "gil", "--json"])
    try:
        doc = json.loads(out)
    except ValueError:
        doc = {}
    rec = doc.get("recommendation", {})
    runs = {r.get("mode") + "_" + r.get("pool", ""): r for r in doc.get("runs", [])}
    tap.ok(rc == 0 and doc.get("cpu_speed") != "varied",
           "the thread run's turn-taking is not taken for CPUs of another "
           "speed", (rc, doc.get("cpu_speed_note"), err))
    # Given two free CPUs (a busy CI machine may not have them), the
    # advice must blame the GIL.
    free = (runs.get("process_cold", {}).get("speedup") or 0) >= 1.6
    tap.ok(not free or (rec.get("mode") == "process" and
                        "GIL" in rec.get("text", "")),
           "process mode, because the threads hold each other up", rec)


main([test_results_match_cpython, test_no_input_and_output, test_where_tasks_run,
      test_cancel_running_python, test_cancel_on_sigint, test_bad_settings,
      test_bench_sees_the_gil])
