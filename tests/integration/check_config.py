"""jobrund -t and the command line: config errors with FILE:LINE, plugin
refusals, thread-safety, settings validation, usage errors.
"""

import os
import re

from jrtest import JOBRUND, main, once, run


def check(cfg):
    return run([JOBRUND, "-c", cfg, "-t"])


def test_good_config(tap, env):
    cfg = env.config('{ name = "a"; plugin = "square"; mode = "thread"; inputs = [1]; }')
    rc, out, err = check(cfg)
    tap.eq((rc, out.strip()), (0, "%s: configuration OK" % cfg), "-t accepts a good config")
    tap.eq(err, "", "and prints nothing on stderr")


def test_every_error_reported(tap, env):
    cfg = env.config("""
  { name = "a"; plugin = "square"; mode = "thread"; workers = 0; },
  { name = "b"; plugin = "square"; mode = "sideways"; },
  { name = "c"; plugin = "square"; mode = "thread"; colour = "red"; },
  { name = "a"; plugin = "square"; mode = "thread"; }""")
    rc, out, err = check(cfg)
    tap.eq(rc, 1, "-t exits 1 on errors")
    lines = err.strip().splitlines()
    tap.ok(len(lines) >= 4, "every error is reported, not only the first", err)
    tap.ok(all(re.match(re.escape(cfg) + r":\d+: ", l) for l in lines),
           "each error reads FILE:LINE: message", err)
    # The jobs list starts on line 6 of the generated file (4 header lines,
    # "jobs = (", an empty line).
    want = {"workers": 7, "sideways": 8, "colour": 9}
    for word, line in want.items():
        hit = [l for l in lines if word in l]
        tap.ok(hit and hit[0].startswith("%s:%d:" % (cfg, line)),
               "the %s error names line %d" % (word, line), err)
    tap.ok(any("duplicate" in l.lower() or "already" in l.lower() for l in lines),
           "a duplicate job name is an error", err)


def test_syntax_error(tap, env):
    cfg = env.write("broken.conf", 'plugin_dir = "/x";\njobs = ( { name = "a" ; } \n')
    rc, out, err = check(cfg)
    tap.eq(rc, 1, "a syntax error fails -t")
    tap.ok(err.startswith(cfg + ":"), "and names the file and line", err)


def test_missing_config(tap, env):
    rc, out, err = check(os.path.join(env.dir, "nope.conf"))
    tap.eq(rc, 1, "a missing config file fails -t")
    tap.ok("nope.conf" in err, "and names it", err)


def test_plugin_refusals(tap, env):
    os.chmod(os.path.join(env.plugin_dir, "cpu.so"), 0o664)
    cfg = env.config("""
  { name = "missing"; plugin = "nosuchplugin"; mode = "thread"; },
  { name = "badabi"; plugin = "badabi"; mode = "process"; },
  { name = "nosym"; plugin = "nosymbol"; mode = "process"; },
  { name = "writable"; plugin = "cpu"; mode = "thread"; inputs = [1]; },
  { name = "good"; plugin = "square"; mode = "thread"; inputs = [3]; }""")
    rc, out, err = check(cfg)
    tap.eq(rc, 1, "-t fails on bad plugins")
    for job, line, words in (("missing", 7, ["nosuchplugin", "No such file"]),
                             ("badabi", 8, ["ABI", "99"]),
                             ("nosym", 9, ["jr_plugin"]),
                             ("writable", 10, ["writable"])):
        hit = [l for l in err.splitlines() if "'%s'" % job in l]
        tap.ok(hit and hit[0].startswith("%s:%d:" % (cfg, line))
               and all(w in hit[0] for w in words),
               "plugin refusal for job %s names file, line and reason" % job, err)
    tap.ok("'good'" not in err, "the good job is not blamed", err)
    # --once of only the good job works: a bad plugin disables its own jobs.
    rc, res, err = once(cfg, "good")
    tap.eq((rc, [r.get("output") for r in res]), (0, ["9"]),
           "a bad plugin does not stop other jobs from running")


def test_thread_safety_flag(tap, env):
    cfg = env.config("""
  { name = "unsafe"; plugin = "notsafe"; mode = "thread"; workers = 2; },
  { name = "alone"; plugin = "notsafe"; mode = "thread"; workers = 1; inputs = ["x"]; },
  { name = "proc"; plugin = "notsafe"; mode = "process"; workers = 2; inputs = ["y"]; }""")
    rc, out, err = check(cfg)
    tap.eq(rc, 1, "a non-thread-safe plugin with 2 threads is a config error")
    hit = [l for l in err.splitlines() if "'unsafe'" in l]
    tap.ok(hit and hit[0].startswith(cfg + ":7:") and "thread" in hit[0],
           "it names the job, line and why", err)
    tap.ok("'alone'" not in err and "'proc'" not in err,
           "one thread, or process mode, is fine", err)


def test_settings_validation(tap, env):
    cfg = env.config("""
  { name = "s1"; plugin = "settings"; mode = "thread";
    settings = { factor = 500; label = 3; bogus = 1; }; },
  { name = "s2"; plugin = "settings"; mode = "thread"; inputs = [2];
    settings = { factor = 7; label = "x"; }; },
  { name = "e1"; plugin = "exec"; mode = "process"; settings = { }; }""")
    rc, out, err = check(cfg)
    tap.eq(rc, 1, "bad settings fail -t")
    lines = err.splitlines()
    for word in ("factor", "label", "bogus"):
        hit = [l for l in lines if "settings." + word in l]
        tap.ok(hit and hit[0].startswith(cfg + ":8:"),
               "settings.%s is reported at its line" % word, err)
    tap.ok(any("'e1'" in l and "command" in l for l in lines),
           "exec without a command is reported", err)
    rc, res, err = once(cfg, "s2")
    tap.eq([r.get("output") for r in res], ["x:14"],
           "a job with valid settings gets them")


def test_errors_in_included_files(tap, env):
    # A job defined in an @include file: errors found when its plugin is
    # loaded, and by the plugin in its settings, name that file (by its
    # full path) and the line there, not the main file's.
    os.mkdir(os.path.join(env.dir, "jobs.d"))
    inc = env.write("jobs.d/more.conf", """# more jobs
{ name = "gone"; plugin = "nosuchplugin"; mode = "thread"; },
{ name = "s4"; plugin = "settings"; mode = "thread";
  settings = { factor = 500; }; }
""")
    cfg = env.config('  @include "jobs.d/more.conf"')
    rc, out, err = check(cfg)
    tap.eq(rc, 1, "included jobs: -t fails")
    lines = err.splitlines()
    hit = [l for l in lines if "'gone'" in l]
    tap.ok(hit and hit[0].startswith(inc + ":2: ") and "nosuchplugin" in hit[0],
           "a bad plugin of an included job is reported at its file and line", err)
    hit = [l for l in lines if "settings.factor" in l]
    tap.ok(hit and hit[0].startswith(inc + ":4: "),
           "a plugin's settings error in an included file names its full path", err)


def test_usage(tap, env):
    rc, out, err = run([JOBRUND, "--no-such-option"])
    tap.eq(rc, 2, "an unknown option is a usage error (2)")
    rc, out, err = run([JOBRUND, "-V"])
    tap.ok(rc == 0 and out.startswith("jobrund "), "-V prints the version", out)
    rc, out, err = run([JOBRUND, "-h"])
    tap.ok(rc == 0 and "--once" in out and "--check-config" in out, "-h prints help")
    rc, out, err = run([JOBRUND, "stray"])
    tap.eq(rc, 2, "a stray argument is a usage error")
    cfg = env.config('{ name = "a"; plugin = "square"; mode = "thread"; }')
    rc, out, err = run([JOBRUND, "-c", cfg, "-t", "--once"])
    tap.eq(rc, 2, "-t with --once is a usage error")


main([test_good_config, test_every_error_reported, test_syntax_error,
      test_errors_in_included_files,
      test_missing_config, test_plugin_refusals, test_thread_safety_flag,
      test_settings_validation, test_usage])
