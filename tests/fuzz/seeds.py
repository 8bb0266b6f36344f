#!/usr/bin/env python3
"""seeds.py - write the fuzz targets' seed corpora into tests/fuzz/corpus/.

    tests/fuzz/seeds.py            (from the top of the source tree)

config/: the shipped configs (etc/*.conf) and configs covering every key,
the error paths and libconfig's corners; proto/: well-formed worker
protocol streams, one per message type and a conversation, framed as
daemon/proto.c writes them; ctl/: every control request of ctl.c's
protocol comment and the bad ones tests/integration/ctl.py sends.
Regenerating keeps files already there (crash regressions among them).
"""

import os
import shutil
import struct
import sys

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CORPUS = os.path.join(TOP, "tests", "fuzz", "corpus")


def put(kind, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- config ----------------------------------------------------------------

CONFIGS = {
    "every-key": """
plugin_dir = "/nonexistent"; control_socket = "/tmp/x.sock"; state_dir = "/tmp/st";
control_group = "root"; control_readonly = true; log_level = "debug";
shutdown_grace = 2.5; history_keep = 10;
jobs = (
  { name = "a"; plugin = "square"; mode = "thread"; workers = 2; inputs = [ 1, 2, 3 ];
    schedule = "*/5 * * * 1-5"; timezone = "Europe/Paris"; catchup = "once";
    timeout = "30s"; kill_grace = 500ms; overlap = "queue"; retries = 2;
    retry_delay = "1s"; retry_max_delay = "1m"; history_keep = 5; enabled = true; },
  { name = "b.x-y_z"; plugin = "exec"; mode = "process"; schedule = "@every 10m";
    settings = { command = [ "sh", "-c", "echo $0" ]; timeout = 3; };
    env = { A = "b"; PATH = "/bin"; }; cwd = "/tmp"; user = "nobody"; group = "nogroup";
    rlimits = { nofile = 64; as = "1G"; cpu = 10; nproc = 100; core = 0; };
    max_rss = "64M"; max_tasks_per_worker = 10; output_limit = "1K";
    overlap = "allow"; max_concurrent_runs = 3; inputs = ( "x", 1, 2.5, true, 10L ); },
  { name = "c"; plugin = "settings"; mode = "thread"; schedule = "@manual";
    settings = { factor = 7; label = "x"; }; },
  { name = "d"; plugin = "sleep"; mode = "process"; schedule = "@start"; enabled = false; }
);
""",
    "errors": """
jobs = (
  { name = "a"; plugin = "square"; mode = "thread"; workers = 0; },
  { name = "b"; plugin = "square"; mode = "sideways"; },
  { name = "c"; plugin = "square"; mode = "thread"; colour = "red"; },
  { name = "a"; plugin = "nosuchplugin"; mode = "thread"; },
  { name = ""; plugin = "badabi"; mode = "process"; },
  { name = "n"; plugin = "notsafe"; mode = "thread"; workers = 2; },
  { name = "t"; plugin = "square"; mode = "thread"; timeout = "-1s"; retries = -1;
    schedule = "61 * * * *"; timezone = "Nowhere/City"; overlap = "sometimes"; }
);
""",
    "big-ints": """
shutdown_grace = 99999999999;
jobs = ( { name = "i"; plugin = "square"; mode = "thread";
  workers = 4294967296; retries = 99999999999999999999999;
  inputs = [ 0x7fffffffffffffffL, -9223372036854775808L, 1e308, -0.0 ]; } );
""",
    "include": """
# an @include of a fragment, and one of this very file
jobs = (
@include "inc.conf"
);
""",
    "self-include": '@include "fuzz.conf"\n',
    "comments-strings": """
/* a comment with "quotes" and 12 */ // and 34
# 56
jobs = ( { name = "s"; plugin = "exec"; mode = "process";
  settings = { command = [ "printf", "%s\\n\\"\\\\", "a" "b" ]; }; inputs = [ "\\x41", "7" ]; } );
""",
    "durations": """
jobs = ( { name = "d"; plugin = "sleep"; mode = "thread"; timeout = "500ms";
  kill_grace = "2m"; retry_delay = 1.5; retry_max_delay = "1h"; schedule = "@every 1s"; },
  { name = "e"; plugin = "sleep"; mode = "thread"; timeout = "5x"; schedule = "@every"; } );
""",
    "cron": """
jobs = ( { name = "c1"; plugin = "square"; mode = "thread"; schedule = "0 0 29 2 *"; },
  { name = "c2"; plugin = "square"; mode = "thread"; schedule = "@hourly"; timezone = "UTC"; },
  { name = "c3"; plugin = "square"; mode = "thread"; schedule = "*/0 * * * *"; },
  { name = "c4"; plugin = "square"; mode = "thread"; schedule = "0 12 * JAN-MAR MON,FRI";
    timezone = "EST5EDT,M3.2.0,M11.1.0"; } );
""",
    "nested": "jobs = ( { name = \"n\"; plugin = \"square\"; mode = \"thread\"; settings = "
              + "{ x = " * 200 + "1" + "; }" * 200 + "; } );\n",
    "empty": "",
    "syntax": 'jobs = ( { name = "a" ; } \n',
}


def configs():
    for name in sorted(os.listdir(os.path.join(TOP, "etc"))):
        if name.endswith(".conf"):
            shutil.copyfile(os.path.join(TOP, "etc", name),
                            os.path.join(CORPUS, "config", "seed-etc-" + name))
    for name, text in CONFIGS.items():
        put("config", name + ".conf", text)


# --- proto (daemon/proto.c's framing) ----------------------------------------

HELLO, READY, FAIL, TASKS, CANCEL, RESULT, LOG, ACK, SPAWN, SPAWNED = range(1, 11)
VERSION = 3
NONE = 0xffffffff
RLIMITS = 5


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v & 0xffffffffffffffff)


def f64(v):
    return struct.pack("<d", v)


def s(v):
    if v is None:
        return u32(NONE)
    v = v.encode() if isinstance(v, str) else v
    return u32(len(v)) + v


def frame(t, payload):
    return u32(len(payload) + 1) + bytes([t]) + payload


def hello(job="j", settings="factor = 2;\n", user=None, cwd=None):
    return frame(HELLO, u32(VERSION) + s(job) + s("/usr/lib/jobrund") + s("square") +
                 s(settings) + s("/etc/jobrund.conf") + u32(6) +
                 b"".join(u64(v) for v in (-1, 10, 64, -1, 0)) +
                 s(user) + u32(65534) + u32(65534) + u32(1 if user else 0) + s(cwd))


def result(i, status=0, out=b"25", err=None, flags=0):
    return frame(RESULT, u64(i) + u32(status) + u32(flags) + s(out) + s(err) +
                 u64(1700000000) + u32(123456789) + f64(0.004) + f64(0.002))


def tasks(first, inputs, timeout=30.0):
    return frame(TASKS, u64(first) + f64(timeout) + u32(len(inputs)) +
                 b"".join(s(i) for i in inputs))


def proto():
    msgs = {
        "hello": hello(),
        "hello-user": hello(user="nobody", cwd="/tmp", settings=None),
        "ready": frame(READY, u32(VERSION) + u32(4242)),
        "fail": frame(FAIL, s("plugin 'x': init failed")),
        "task": tasks(7, ["5"]),
        "task-noinput": tasks(8, [None], 0.0),
        "tasks": tasks(0, [str(i) for i in range(64)] + ["", None, "x" * 300]),
        "cancel": frame(CANCEL, u64(7)),
        "ack": frame(ACK, u64(7)),
        "result": result(7),
        "result-output": result(7, 0, b"7", None, 1),
        "result-failed": result(9, 1, b"", "bad input"),
        "result-binary": result(10, 0, bytes(range(256))),
        "log": frame(LOG, u32(4) + s("a plugin says hello")),
        "spawn": frame(SPAWN, u64(5) + s("nightly") + u32(3) + s("PATH=/bin") + s("") +
                       s("JOBRUND_WORKER=4242.5")),
        "spawned": frame(SPAWNED, u64(5) + u32(4243) + u32(0)),
    }
    conv = hello() + frame(READY, u32(VERSION) + u32(1)) + tasks(0, ["0", "1"], 1.0) + \
        b"".join(frame(LOG, u32(6) + s("x")) + result(i) for i in range(2)) + \
        tasks(2, ["2", "3", "4"], 1.0) + result(2, 0, b"4", None, 1) + frame(ACK, u64(2)) + \
        result(3) + result(4) + frame(CANCEL, u64(5))
    msgs["conversation"] = conv
    # The first byte is the harness's chunk size: whole, and split small.
    for name, data in msgs.items():
        put("proto", name, b"\xff" + data)
    put("proto", "conversation-split", b"\x00" + conv)
    put("proto", "truncated", b"\x10" + conv[:-3])
    put("proto", "too-big", b"\x00" + u32(0x7fffffff) + bytes([TASKS]))


# --- ctl (line-delimited JSON, daemon/ctl.c) ----------------------------------

def ctl():
    good = [
        '{"v":1,"cmd":"status"}',
        '{"v":1,"cmd":"show","job":"NAME"}',
        '{"v":1,"cmd":"run","job":"NAME","wait":true}',
        '{"v":1,"cmd":"cancel","job":"NAME"}',
        '{"v":1,"cmd":"kill","job":"NAME","signal":15}',
        '{"v":1,"cmd":"workers"}',
        '{"v":1,"cmd":"workers","job":null}',
        '{"v":1,"cmd":"history","job":"NAME","n":10}',
        '{"v":1,"cmd":"reload"}',
        '{"v":1,"cmd":"version"}',
    ]
    bad = [
        "this is not json", "[1, 2]", '{"cmd":"status"}', '{"v":99,"cmd":"status"}',
        '{"v":1}', '{"v":1,"cmd":"frobnicate"}', '{"v":1,"cmd":"kill","job":"job","signal":999}',
        '{"v":1,"cmd":"show"}', '{"v":1,"v":1,"cmd":"status"}', '{"v":1.0,"cmd":"status"}',
        '{"v":1,"cmd":"st\\u0000atus"}', '{"v":1,"cmd":"show","job":"\\ud800"}', "   \t",
    ]
    for i, line in enumerate(good):
        put("ctl", "good-%02d" % i, line + "\n")
    for i, line in enumerate(bad):
        put("ctl", "bad-%02d" % i, line + "\n")
    put("ctl", "session", "\n".join(good + bad) + "\n")
    put("ctl", "crlf", "\r\n".join(good) + "\r\n")
    put("ctl", "partial", '{"v":1,"cmd":"status"}\n{"v":1,"cmd":"sta')


def main():
    for kind in ("config", "proto", "ctl"):
        os.makedirs(os.path.join(CORPUS, kind), exist_ok=True)
    configs()
    proto()
    ctl()
    for kind in ("config", "proto", "ctl"):
        print("%s: %d files" % (kind, len(os.listdir(os.path.join(CORPUS, kind)))))


if __name__ == "__main__":
    sys.exit(main())
