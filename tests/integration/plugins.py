"""The shipped plugins' edges, in both modes: square's and cpu's ranges,
sleep's input checks, exec's output handling (trimmed, binary-safe JSON,
stdin closed)."""

from jrtest import main, once


def both(name, plugin, inputs, settings=""):
    jobs = []
    for mode in ("thread", "process"):
        jobs.append('{ name = "%s_%s"; plugin = "%s"; mode = "%s"; inputs = ( %s ); %s }'
                    % (name, mode, plugin, mode, ", ".join(inputs), settings))
    return ",\n".join(jobs)


def outcomes(res, job):
    return [(r.get("status"), r.get("output")) for r in res if r.get("job") == job]


def test_square_range(tap, env):
    good = ["-3", "9223372036854775807L", '"-9223372036854775808"',
            '"+0012"', '"-0"']
    bad = ['"9223372036854775808"', '"-9223372036854775809"',
           '"99999999999999999999x"', '"1.5"', '""', '"-"', '" 5"', '"5 "',
           '"0x10"']
    cfg = env.config(both("sq", "square", good + bad))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "bad square inputs fail the run")
    for mode in ("thread", "process"):
        got = outcomes(res, "sq_" + mode)
        tap.eq(got[:len(good)],
               [("ok", "9"), ("ok", str(9223372036854775807 ** 2)),
                ("ok", str(9223372036854775808 ** 2)), ("ok", "144"),
                ("ok", "0")],
               "square %s: negative, int64 min and max, sign and zeros are exact"
               % mode)
        tap.eq([s for s, o in got[len(good):]], ["failed"] * len(bad),
               "square %s: overflow either way, junk, fractions, spaces, hex "
               "and empty input fail" % mode)


def test_cpu_range(tap, env):
    cfg = env.config(both("cpu", "cpu", ['"4294967297"', '"1e3"', '" 5"', "3"]))
    rc, res, err = once(cfg)
    for mode in ("thread", "process"):
        got = outcomes(res, "cpu_" + mode)
        tap.eq([s for s, o in got], ["failed", "failed", "failed", "ok"],
               "cpu %s: out-of-range and malformed inputs fail, 3 works" % mode)
        tap.eq(got[3][1] if len(got) > 3 else None, "5", "cpu %s: sum(i*i for i<3) = 5" % mode)


def test_sleep_inputs(tap, env):
    cfg = env.config(both("sl", "sleep", ['"0.01"', '"-1"', '"soon"', '"100000"']))
    rc, res, err = once(cfg)
    for mode in ("thread", "process"):
        got = outcomes(res, "sl_" + mode)
        tap.eq([s for s, o in got], ["ok", "failed", "failed", "failed"],
               "sleep %s: only a sane number of seconds is accepted" % mode)


def test_exec_output(tap, env):
    cfg = env.config(both("ex", "exec", ['"x"'],
                          'settings = { command = ["sh", "-c", '
                          '"printf \'tab\\\\there\\\\001\\\\377 %s\\\\n\\\\n\' \\"$0\\"; '
                          'cat; echo end"]; };'))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "exec with odd output succeeds")
    for mode in ("thread", "process"):
        got = outcomes(res, "ex_" + mode)
        tap.eq(got, [("ok", "tab\there\x01\ufffd x\n\nend")],
               "exec %s: output is JSON-escaped, invalid UTF-8 replaced, "
               "stdin empty, one trailing newline trimmed" % mode)


main([test_square_range, test_cpu_range, test_sleep_inputs, test_exec_output])
