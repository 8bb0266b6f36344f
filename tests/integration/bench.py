"""jobrund --bench: the table, the JSON, the exit codes, a plugin that is
not thread-safe, failed tasks, --warm's runs on warm pools, a signal, and
no worker left behind.

Runs the real jobrund on temporary configs.  No assertion is about time:
the figures depend on the machine; what is checked is that each run is
there, complete, and says what it measured.
"""

import json
import os
import signal
import subprocess

from jrtest import (JOBRUND, TIMEOUT, main, processes_matching, run,
                    wait_for)

RUN_KEYS = {"mode", "pool", "workers", "ran", "complete", "tasks_done", "failed",
            "wall_s", "cpu_s", "user_s", "sys_s", "cpu_per_wall", "speedup",
            "tasks_per_s", "startup_s", "overhead_per_task_s",
            "task_wall_sum_s", "task_cpu_sum_s", "peak_rss_kib", "daemon", "worker_processes",
            "failures", "note"}


def job(name, plugin, mode, workers, inputs):
    return ('{ name = "%s"; plugin = "%s"; mode = "%s"; workers = %d; '
            'inputs = [ %s ]; }' % (name, plugin, mode, workers,
                                    ", ".join(inputs)))


def config(env):
    return env.config(",\n".join([
        job("sq", "square", "thread", 2, [str(i) for i in range(10)]),
        job("ns", "notsafe", "process", 2, ['"a"', '"b"', '"c"']),
        job("bad", "cpu", "process", 2, ['"abc"', '"10"']),
        job("slow", "sleep", "thread", 2, ['"0.25"'] * 4)]))


def bench(cfg, *args):
    return run([JOBRUND, "-c", cfg, "--bench"] + list(args))


def no_workers_left(tap, name):
    tap.eq(processes_matching("jobrund-worker: %s" % name), [],
           "no %s worker left after --bench" % name)


WARM_ROWS = ("thread, warm", "process, warm")


def rows(out):
    """The table's rows, by mode ("thread, warm" for a warm one): the
    words of each line, the mode first."""
    found = {}
    for line in out.splitlines():
        words = line.split()
        if words[:2] in (["thread,", "warm"], ["process,", "warm"]):
            words = [" ".join(words[:2])] + words[2:]
        if words and words[0] in ("sequential", "thread", "process") + WARM_ROWS:
            found[words[0]] = words
    return found


def test_table(tap, env):
    rc, out, err = bench(config(env), "sq")
    tap.eq(rc, 0, "--bench on a square job exits 0")
    tap.ok(out.startswith("jobrund --bench sq: plugin square"),
           "the table names the job and plugin", out)
    for col in ("wall", "CPU", "speed-up", "peak RSS", "start-up",
                "overhead/task"):
        tap.ok(col in out.splitlines()[2], "the header has a %s column" % col,
               out)
    r = rows(out)
    tap.eq(sorted(r), ["process", "sequential", "thread"],
           "one row per mode: sequential, thread, process")
    tap.ok(r.get("thread", [None, None])[1] == "2" and
           r.get("process", [None, None])[1] == "2",
           "thread and process ran the job's 2 workers", r)
    tap.ok(all(w[-1] == "0" for w in r.values()), "no task failed", r)
    rec = [l for l in out.splitlines() if l.startswith("recommendation: ")]
    tap.ok(len(rec) == 1 and (" mode" in rec[0]) and ":" in rec[0][16:],
           "one recommendation line, with a mode and a reason", rec)
    tap.ok("overhead/task  (wall x" in out, "the legend defines overhead", out)
    no_workers_left(tap, "sq")


def test_json(tap, env):
    rc, out, err = bench(config(env), "sq", "--json", "--workers", "3",
                         "--repeat", "2")
    tap.eq(rc, 0, "--bench --json exits 0")
    try:
        doc = json.loads(out)
    except ValueError as e:
        tap.ok(False, "--json prints one JSON document", "%s\n%s" % (e, out))
        return
    tap.ok(True, "--json prints one JSON document")
    tap.eq((doc.get("job"), doc.get("plugin"), doc.get("inputs"),
            doc.get("repeat"), doc.get("tasks"), doc.get("workers")),
           ("sq", "square", 10, 2, 20, 3),
           "job, plugin, inputs, repeat, tasks and --workers are reported")
    runs = doc.get("runs", [])
    tap.eq([r.get("mode") for r in runs], ["sequential", "thread", "process"],
           "three runs, in order")
    tap.eq([r.get("pool") for r in runs], ["none", "cold", "cold"],
           "without --warm: no pool, then two cold ones")
    tap.eq([r.get("workers") for r in runs], [1, 3, 3],
           "--workers sets both pools' size")
    for r in runs:
        tap.ok(RUN_KEYS <= set(r), "%s run has every field" % r.get("mode"),
               sorted(RUN_KEYS - set(r)))
        tap.ok(r.get("complete") and r.get("tasks_done") == 20 and
               r.get("failed") == 0,
               "%s run did all 20 tasks" % r.get("mode"), r)
        tap.ok(isinstance(r.get("wall_s"), float) and r["wall_s"] > 0 and
               isinstance(r.get("peak_rss_kib"), int) and
               r["peak_rss_kib"] > 0,
               "%s run has a wall time and a peak RSS" % r.get("mode"), r)
    procs = runs[2].get("worker_processes", []) if len(runs) == 3 else []
    tap.ok(1 <= len(procs) <= 3 and all(p.get("rss_kib") for p in procs),
           "process run saw its worker processes and their memory", procs)
    rec = doc.get("recommendation", {})
    tap.ok(rec.get("mode") in ("thread", "process", "none") and
           rec.get("text"),
           "the recommendation has a mode and a text", rec)
    no_workers_left(tap, "sq")


def test_usage_errors(tap, env):
    cfg = config(env)
    rc, out, err = bench(cfg, "nosuch")
    tap.eq(rc, 2, "an unknown job exits 2")
    tap.ok("nosuch" in err, "and says which job", err)
    for bad in ("0", "1025", "abc", "-1"):
        rc, out, err = bench(cfg, "sq", "--workers", bad)
        tap.eq(rc, 2, "--workers %s exits 2" % bad)
    rc, out, err = bench(cfg, "sq", "--repeat", "0")
    tap.eq(rc, 2, "--repeat 0 exits 2")
    rc, out, err = run([JOBRUND, "-c", cfg, "--workers", "2"])
    tap.eq(rc, 2, "--workers without --bench exits 2")
    rc, out, err = run([JOBRUND, "-c", cfg, "--warm"])
    tap.ok(rc == 2 and "--warm" in err,
           "--warm without --bench exits 2, naming it", (rc, err))
    rc, out, err = run([JOBRUND, "-c", cfg, "--bench", "sq", "--once"])
    tap.eq(rc, 2, "--bench with --once exits 2")
    rc, out, err = bench(env.write("broken.conf", "jobs = ( { name = ; } );\n"),
                         "sq")
    tap.eq(rc, 1, "a broken config exits 1")


def test_not_thread_safe(tap, env):
    cfg = config(env)
    rc, out, err = bench(cfg, "ns")
    tap.eq(rc, 0, "--bench on a plugin that is not thread-safe exits 0")
    r = rows(out)
    tap.eq((r.get("thread", [None, None])[1], r.get("process", [None, None])[1]),
           ("1", "2"), "thread mode ran 1 worker, process mode 2")
    tap.ok("thread mode ran 1 worker, not 2: plugin notsafe is not thread-safe"
           in out, "the table says why", out)
    rc, out, err = bench(cfg, "ns", "--json")
    doc = json.loads(out)
    tap.eq([r["workers"] for r in doc["runs"]], [1, 1, 2],
           "--json agrees: 1 thread, 2 processes")
    tap.ok(doc["thread_safe"] is False and
           "not thread-safe" in (doc["runs"][1]["note"] or ""),
           "--json says the plugin is not thread-safe", doc["runs"][1])
    no_workers_left(tap, "ns")


def test_failed_tasks(tap, env):
    cfg = config(env)
    rc, out, err = bench(cfg, "bad")
    tap.eq(rc, 3, "a failed task makes --bench exit 3")
    r = rows(out)
    tap.ok(sorted(r) == ["process", "sequential", "thread"] and
           all(w[-1] == "1" for w in r.values()),
           "the table still comes out, one failure per mode", out)
    tap.ok('task 0 (input 0 "abc"): failed' in out,
           "the failed task is named with its input", out)
    rc, out, err = bench(cfg, "bad", "--json")
    doc = json.loads(out)
    fails = [f for r in doc["runs"] for f in r["failures"]]
    tap.ok(rc == 3 and doc["failed"] == 3 and len(fails) == 3 and
           all(f["input"] == "abc" and f["status"] == "failed" and
               "abc" in f["error"] for f in fails),
           "--json lists the failures", fails)
    no_workers_left(tap, "bad")
    # Failing in one mode only (no worker can start) is not running fast.
    rc, out, err = run([JOBRUND, "-c", cfg, "--bench", "sq", "--json"],
                       env=dict(os.environ, JOBRUND_WORKER_PATH="/nonexistent"))
    doc = json.loads(out)
    rec = doc.get("recommendation", {})
    tap.ok(rc == 3 and [r["failed"] for r in doc["runs"]] == [0, 0, 10] and
           rec.get("mode") == "none" and
           "more tasks failed in one mode than in another" in rec.get("text", ""),
           "tasks failing in process mode only: no recommendation, and why", rec)


def test_cpu_speed(tap, env):
    """CPU-bound tasks whose CPU time differs between runs ran on CPUs of
    another speed.  The test plugin spins three times as long in a worker
    process: with 2 workers that is what cores slowing each other down
    look like (the modes still compare); with 1 worker, nothing ran in
    parallel, so the machine's speed changed (the modes do not compare:
    the advice is hedged).  Its init's CPU (init_burn_ms) is no task's."""
    cfg = env.config(",\n".join([
        job("burn", "crash", "process", 2, ['"burnslow:30"'] * 4)[:-1] +
        ' settings = { init_burn_ms = 60; }; }',
        job("slow", "sleep", "thread", 2, ['"0.25"'] * 4)]), name="speed.conf")
    rc, out, err = bench(cfg, "burn", "--workers", "1")
    tap.eq(rc, 0, "--bench exits 0")
    note = [l for l in out.splitlines() if l.startswith("note: the same tasks")]
    tap.ok(len(note) == 1 and "did not run at one speed" in note[0] and
           "in process mode" in note[0],
           "1 worker: a note says the CPUs did not run at one speed, with "
           "what each run took", out)
    rec = [l for l in out.splitlines() if l.startswith("recommendation: ")]
    tap.ok(rec and rec[0].endswith("measure again before relying on it"),
           "and the recommendation is hedged", rec)
    rc, out, err = bench(cfg, "burn", "--workers", "1", "--json")
    doc = json.loads(out)
    cpu = [r.get("task_cpu_sum_s") or 0 for r in doc["runs"]]
    tap.ok(doc.get("cpu_speed") == "varied" and
           "did not run at one speed" in (doc.get("cpu_speed_note") or ""),
           "--json: cpu_speed varied, and its note", doc.get("cpu_speed_note"))
    tap.ok(len(cpu) == 3 and cpu[2] > 2 * cpu[0] and cpu[0] > 0.1,
           "--json: each run's task CPU (process mode's about 3x)", cpu)
    rc, out, err = bench(cfg, "burn", "--json")
    doc = json.loads(out)
    tap.ok(rc == 0 and doc.get("cpu_speed") == "parallel" and
           "slower with several workers busy" in (doc.get("cpu_speed_note") or "") and
           "the modes compare" in doc["cpu_speed_note"] and
           not doc["recommendation"]["text"].endswith("before relying on it"),
           "2 workers: said as a cost of running in parallel; advice not "
           "hedged", doc.get("cpu_speed_note"))
    rc, out, err = bench(cfg, "slow", "--json")
    doc = json.loads(out)
    tap.ok(rc == 0 and "cpu_speed" in doc and doc["cpu_speed"] is None and
           doc.get("cpu_speed_note", False) is None,
           "tasks that mostly wait are not judged (null)", doc.get("cpu_speed"))
    no_workers_left(tap, "burn")


def test_warm_json(tap, env):
    rc, out, err = bench(config(env), "sq", "--warm", "--json")
    tap.eq(rc, 0, "--bench --warm --json exits 0")
    try:
        doc = json.loads(out)
    except ValueError as e:
        tap.ok(False, "--warm --json prints one JSON document",
               "%s\n%s" % (e, out))
        return
    runs = doc.get("runs", [])
    tap.eq([(r.get("mode"), r.get("pool")) for r in runs],
           [("sequential", "none"), ("thread", "cold"), ("process", "cold"),
            ("thread", "warm"), ("process", "warm")],
           "five runs: the three as without --warm, then thread and process "
           "on warm pools")
    tap.eq([r.get("workers") for r in runs], [1, 2, 2, 2, 2],
           "the warm pools have the job's 2 workers")
    for r in runs[3:]:
        name = "%s, warm" % r.get("mode")
        tap.ok(RUN_KEYS <= set(r), "%s run has every field" % name,
               sorted(RUN_KEYS - set(r)))
        tap.ok(r.get("ran") and r.get("complete") and
               r.get("tasks_done") == 10 and r.get("failed") == 0,
               "%s run did all 10 tasks" % name, r)
        tap.ok(isinstance(r.get("wall_s"), float) and r["wall_s"] > 0 and
               isinstance(r.get("cpu_s"), (int, float)) and
               r["cpu_s"] >= 0 and
               isinstance(r.get("startup_s"), float) and
               isinstance(r.get("peak_rss_kib"), int) and
               r["peak_rss_kib"] > 0,
               "%s run has a wall time, a CPU time, a start-up and a peak "
               "RSS" % name, r)
        tap.ok(r.get("user_s") is None and r.get("sys_s") is None,
               "%s run does not split its CPU into user and sys" % name, r)
    # The pool a run finds warm: every worker it saw was there when it
    # began; a cold run's were all started by it.
    cold = runs[2].get("worker_processes", []) if len(runs) == 5 else []
    warm = runs[4].get("worker_processes", []) if len(runs) == 5 else []
    tap.ok(1 <= len(cold) <= 2 and
           all(p.get("started_in_run") is True for p in cold),
           "the cold process run started its workers", cold)
    tap.ok(1 <= len(warm) <= 2 and
           all(p.get("started_in_run") is False for p in warm),
           "the warm process run started no worker: it ran on those the "
           "warm-up started", warm)
    tap.ok(not {p.get("pid") for p in warm} & {p.get("pid") for p in cold},
           "the warm process run has a pool of its own, not the cold one's",
           (cold, warm))
    tap.ok(doc.get("failed") == 0 and doc.get("interrupted") is False,
           "no task failed in any run", doc.get("failed"))
    no_workers_left(tap, "sq")


def test_warm_table(tap, env):
    cfg = config(env)
    rc, out, err = bench(cfg, "sq", "--warm")
    tap.eq(rc, 0, "--bench --warm exits 0")
    r = rows(out)
    tap.eq(sorted(r), sorted(("sequential", "thread", "process") + WARM_ROWS),
           "a row per run: the three, and thread and process on warm pools")
    tap.ok(all(r.get(m, [None, None])[1] == "2" for m in WARM_ROWS),
           "the warm runs ran the job's 2 workers", r)
    tap.ok(all(w[-1] == "0" for w in r.values()), "no task failed", r)
    rec = [l for l in out.splitlines() if l.startswith("recommendation: ")]
    tap.ok(len(rec) == 1, "still one recommendation line", rec)
    tap.ok("warm           a second run on the pool the first one started"
           in out, "the legend says what warm means", out)
    rc, out, err = bench(cfg, "sq")
    tap.ok(not set(WARM_ROWS) & set(rows(out)) and "warm " not in out,
           "without --warm, no warm row and no warm legend", out)
    rc, out, err = bench(cfg, "ns", "--warm", "--json")
    doc = json.loads(out)
    tap.eq([r["workers"] for r in doc["runs"]], [1, 1, 2, 1, 2],
           "a plugin that is not thread-safe: 1 thread, warm too")
    rc, out, err = bench(cfg, "bad", "--warm", "--json")
    doc = json.loads(out)
    tap.ok(rc == 3 and doc["failed"] == 5 and
           [r["failed"] for r in doc["runs"]] == [1, 1, 1, 1, 1],
           "a failed task counts in the warm runs too, and exits 3",
           (rc, [r["failed"] for r in doc["runs"]]))
    no_workers_left(tap, "ns")
    no_workers_left(tap, "bad")


def test_prestart_implies_warm(tap, env):
    """A prestarted job's runs never start a pool: its bench measures the
    warm runs without being asked, and the advice quotes them as its
    runs'."""
    cfg = env.config(job("pre", "square", "process", 2,
                         [str(i) for i in range(10)])[:-1] +
                     " prestart = true; }")
    rc, out, err = bench(cfg, "pre", "--json")
    tap.ok(rc == 0, "--bench on a prestarted job exits 0", err)
    doc = json.loads(out) if rc == 0 else {}
    tap.eq([(r.get("mode"), r.get("pool")) for r in doc.get("runs", [])],
           [("sequential", "none"), ("thread", "cold"), ("process", "cold"),
            ("thread", "warm"), ("process", "warm")],
           "the warm runs come without --warm")
    tap.ok(doc.get("recommendation", {}).get("text", "").endswith(
        "; from the warm runs, as every run of this job (prestart) finds "
        "its pool"), "the advice comes from the warm runs, and says so",
        doc.get("recommendation"))
    no_workers_left(tap, "pre")


def test_warm_signal(tap, env):
    """SIGINT while the warm process run's workers are up: the bench stops,
    prints what it has, exits 3, and leaves no worker."""
    cfg = config(env)
    p = subprocess.Popen([JOBRUND, "-c", cfg, "--bench", "slow", "--warm",
                          "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    workers = lambda: processes_matching("jobrund-worker: slow")  # noqa: E731
    # The cold process run's workers come and go, then the thread run on
    # a warm pool passes (no worker), then the warm process pool's come.
    seen = (wait_for(workers) and wait_for(lambda: not workers()) and
            wait_for(workers))
    if seen:
        p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    tap.ok(seen, "the warm process run's workers were seen")
    tap.eq(p.returncode, 3, "SIGINT during the warm process run exits 3")
    try:
        doc = json.loads(out)
    except ValueError as e:
        tap.ok(False, "the partial results come out", "%s\n%s" % (e, out))
        return
    runs = doc.get("runs", [])
    tap.ok(doc.get("interrupted") is True and len(runs) == 5 and
           all(r.get("complete") for r in runs[:4]),
           "the partial results come out, the first four runs complete",
           out)
    no_workers_left(tap, "slow")


main([test_table, test_json, test_usage_errors, test_not_thread_safe,
      test_failed_tasks, test_cpu_speed, test_warm_json, test_warm_table,
      test_prestart_implies_warm, test_warm_signal])
