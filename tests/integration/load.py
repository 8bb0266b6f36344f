"""Load, with bounds (issue 9): 10,000 jobs load and validate in under a
second, and a run of many tiny thread-mode tasks has every result
exactly once.

The task count is 200,000 in make check (some seconds on a loaded 2-core
machine) and 1,000,000 with JR_TEST_FULL=1 (about half a minute, and
some 600 MB in the daemon: a run keeps every task's result until it ends,
for the history).  The other load bounds are with the code they load:
10,000 process-worker lifetimes in supervise.py, 100 concurrent control
clients in ctl.py, a reload of 10,000 jobs in schedule.py.

The 10,000-job bound is on CPU time (user + system) of `jobrund -t`: the
wall time on a shared machine measures the machine; it is reported, and
only has to stay under ten times the bound.
"""

import json
import os
import resource
import subprocess
import time

from jrtest import JOBRUND, TIMEOUT, main

FULL = os.environ.get("JR_TEST_FULL") == "1"
NTASKS = 1000000 if FULL else 200000

# Four kinds of job, every key a real config might use.
KINDS = [
    '{ name = "c%05d"; plugin = "square"; mode = "thread"; workers = 2; '
    'inputs = [ 1, 2, 3 ]; schedule = "*/5 * * * 1-5"; timezone = "Europe/Paris"; '
    'timeout = "30s"; overlap = "queue"; retries = 2; }',
    '{ name = "e%05d"; plugin = "exec"; mode = "process"; schedule = "@every 10m"; '
    'settings = { command = [ "true" ]; }; env = { A = "b"; }; '
    'rlimits = { nofile = 64; core = 0; }; max_rss = "64M"; kill_grace = "2s"; }',
    '{ name = "s%05d"; plugin = "sleep"; mode = "process"; schedule = "@manual"; '
    'inputs = ( "0.1", 2 ); }',
    '{ name = "q%05d"; plugin = "cpu"; mode = "thread"; schedule = "0 3 * * *"; '
    'inputs = [ 1000 ]; enabled = false; }',
]


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def test_10000_jobs(tap, env):
    cfg = env.config(",\n".join(KINDS[i % len(KINDS)] % i for i in range(10000)))
    cpu0, t0 = children_cpu(), time.monotonic()
    p = subprocess.run([JOBRUND, "-c", cfg, "-t"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)
    cpu, wall = children_cpu() - cpu0, time.monotonic() - t0
    tap.ok(p.returncode == 0 and p.stdout.strip() == "%s: configuration OK" % cfg,
           "10,000 jobs: -t says OK", p.stdout + p.stderr[:500])
    tap.diag("10,000 jobs: -t took %.3f s of CPU, %.3f s of wall time" % (cpu, wall))
    tap.ok(cpu < 1.0, "10,000 jobs load and validate in under 1 s of CPU (%.3f s)" % cpu)
    tap.ok(wall < 10.0, "10,000 jobs: and under 10 s of wall time (%.3f s)" % wall)


def test_many_tasks(tap, env):
    n = NTASKS
    cfg = env.config('{ name = "sq"; plugin = "square"; mode = "thread"; workers = 2; '
                     'inputs = [ %s ]; }' % ", ".join(str(i) for i in range(n)))
    seen = bytearray(n)
    wrong = []
    lines = 0
    t0 = time.monotonic()
    p = subprocess.Popen([JOBRUND, "-c", cfg, "--once"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    for line in p.stdout:
        lines += 1
        r = json.loads(line)
        i = r["index"]
        if 0 <= i < n:
            seen[i] = min(seen[i] + 1, 255)
        if (r["status"] != "ok" or r["input"] != str(i) or r["output"] != str(i * i)) \
                and len(wrong) < 5:
            wrong.append(r)
    err = p.stderr.read().decode(errors="replace")
    rc = p.wait()
    took = time.monotonic() - t0
    tap.diag("%d thread-mode tasks: %.1f s, %.0f tasks/s, results read and checked "
             "as they came" % (n, took, n / took if took else 0))
    tap.eq(rc, 0, "%d tiny tasks: --once exits 0" % n)
    tap.eq(lines, n, "%d tiny tasks: one result line per task" % n)
    missing = [i for i in range(n) if seen[i] == 0]
    dup = [i for i in range(n) if seen[i] > 1]
    tap.ok(not missing and not dup, "%d tiny tasks: every index exactly once" % n,
           "missing %r, twice or more %r, stderr %s" % (missing[:10], dup[:10], err[-300:]))
    tap.ok(not wrong, "%d tiny tasks: each ok, with its own input and output" % n, wrong)


main([test_10000_jobs, test_many_tasks])
