"""jrtest - what jobrund's integration tests share.

Each test script imports this, builds configs in a fresh temporary
directory, runs the real programs from the build tree (jobrund --once, -t,
the daemon itself), and reports in TAP for automake's tap-driver.sh.

Plugins are copied from the build tree into the test's own plugin_dir
(mode 0644), so the loader's checks apply to them exactly as installed.
Nothing here sleeps blindly: waits poll a condition with a deadline.
"""

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BUILDDIR = os.environ.get("JR_BUILDDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
JOBRUND = os.path.join(BUILDDIR, "jobrund")
PLUGIN_SOURCES = [os.path.join(BUILDDIR, "plugins", ".libs"),
                  os.path.join(BUILDDIR, "tests", "plugins", ".libs")]

# Built with --enable-sanitizers (ASan cannot run under an RLIMIT_AS).
SANITIZERS = os.environ.get("JR_SANITIZERS") == "1"

# Generous bounds: a loaded 2-core CI machine, possibly under sanitizers.
TIMEOUT = float(os.environ.get("JR_TEST_TIMEOUT", "60"))

# A command put in front of every jobrund this test starts, e.g. valgrind
# with its options (`make valgrind` sets it); split on blanks.
WRAPPER = os.environ.get("JR_TEST_WRAPPER", "").split()


class Tap:
    """A TAP producer: ok() per assertion, the plan at the end."""

    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, diag=None):
        self.n += 1
        print("%s %d - %s" % ("ok" if cond else "not ok", self.n, name))
        if not cond:
            self.failed += 1
            if diag is not None:
                for line in str(diag).splitlines() or [""]:
                    print("# " + line)
        sys.stdout.flush()
        return cond

    def eq(self, got, want, name):
        return self.ok(got == want, name, "got:  %r\nwant: %r" % (got, want))

    def skip(self, name, reason):
        self.n += 1
        print("ok %d - %s # SKIP %s" % (self.n, name, reason))
        sys.stdout.flush()

    def diag(self, msg):
        for line in str(msg).splitlines():
            print("# " + line)
        sys.stdout.flush()

    def done(self):
        print("1..%d" % self.n)
        sys.stdout.flush()
        sys.exit(1 if self.failed else 0)


class Env:
    """A temporary directory with a plugin dir and a place for configs."""

    def __init__(self, tap):
        self.tap = tap
        self.dir = tempfile.mkdtemp(prefix="jobrund-test-")
        os.chmod(self.dir, 0o755)
        self.plugin_dir = os.path.join(self.dir, "plugins")
        os.mkdir(self.plugin_dir, 0o755)
        for src in PLUGIN_SOURCES:
            if not os.path.isdir(src):
                continue
            for name in os.listdir(src):
                if name.endswith(".so"):
                    dst = os.path.join(self.plugin_dir, name)
                    shutil.copyfile(os.path.join(src, name), dst)
                    os.chmod(dst, 0o644)
        self.state_dir = os.path.join(self.dir, "state")
        self.socket = os.path.join(self.dir, "jobrund.sock")
        self.daemons = []

    def config(self, jobs, name="jobrund.conf", extra=""):
        """Write a config with JOBS (libconfig text of the jobs list) and
        return its path."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write('plugin_dir = "%s";\n' % self.plugin_dir)
            f.write('state_dir = "%s";\n' % self.state_dir)
            f.write('control_socket = "%s";\n' % self.socket)
            f.write('log_level = "info";\n')
            f.write(extra)
            f.write("jobs = (\n%s\n);\n" % jobs)
        return path

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def cleanup(self):
        for d in self.daemons:
            d.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def run(args, timeout=TIMEOUT, env=None):
    """Run a command; returns (exit status, stdout, stderr)."""
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, env=env, text=True)
    return p.returncode, p.stdout, p.stderr


def once(config, *jobs, timeout=TIMEOUT):
    """jobrund --once: (status, results sorted by (job, index), stderr)."""
    rc, out, err = run([JOBRUND, "-c", config, "--once"] + list(jobs),
                       timeout=timeout)
    results = []
    for line in out.splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:
            results.append({"unparsable": line})
    results.sort(key=lambda r: (r.get("job", ""), r.get("index", 0)))
    return rc, results, err


# Every process this test starts, so that process scans see only our own:
# the machine is shared, and another test run may use the same job names.
STARTED = set()
_Popen = subprocess.Popen


class _TrackedPopen(_Popen):
    def __init__(self, *args, **kwargs):
        if WRAPPER:
            args, kwargs = _wrapped(args, kwargs)
        super().__init__(*args, **kwargs)
        STARTED.add(self.pid)


def _wrapped(args, kwargs):
    """Popen's arguments with WRAPPER in front of a jobrund command."""
    cmd = args[0] if args else kwargs.get("args")
    if isinstance(cmd, (list, tuple)) and cmd and cmd[0] == JOBRUND:
        cmd = WRAPPER + list(cmd)
        if args:
            args = (cmd,) + tuple(args[1:])
        else:
            kwargs = dict(kwargs, args=cmd)
    return args, kwargs


subprocess.Popen = _TrackedPopen


def track(pid):
    """Count PID (e.g. a daemon that detached) as started by this test."""
    STARTED.add(pid)


def _started_by_us(pid):
    """Whether PID descends from a jobrund this test started: workers and
    what they spawn carry JOBRUND_WORKER=<daemon pid>.<n>."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    for var in env:
        if var.startswith(b"JOBRUND_WORKER="):
            owner = var[len(b"JOBRUND_WORKER="):].split(b".")[0]
            return owner.isdigit() and int(owner) in STARTED
    return pid in STARTED


def processes_matching(marker):
    """Pids of our processes whose command line contains MARKER."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        if marker in cmdline(int(pid)) and int(pid) != os.getpid() and \
                _started_by_us(int(pid)):
            found.append(int(pid))
    return found


def children_of(pid, state=None):
    """Pids of PID's children (in STATE, e.g. "Z", when given)."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        if int(rest[1]) == pid and (state is None or rest[0] == state):
            found.append(int(p))
    return found


FACTORY_TITLE = "jobrund: worker factory"


def cmdline(pid):
    """PID's command line, its arguments joined by spaces ("" if gone)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode(
                errors="replace")
    except OSError:
        return ""


def factory_of(pid):
    """The pid of daemon PID's worker factory, or None."""
    for child in children_of(pid):
        if cmdline(child) == FACTORY_TITLE:
            return child
    return None


def workers_of(pid, state=None):
    """PID's children but its worker factory: its workers (and the
    processes it adopted)."""
    return [c for c in children_of(pid, state) if cmdline(c) != FACTORY_TITLE]


def exhaust_descriptors(env, pid, spare=8, clients=40):
    """Leave daemon PID SPARE descriptors above what it has open now
    (prlimit), then take them, and more, with idle clients of ENV's
    control socket.  Returns the client sockets: closing them gives the
    descriptors back."""
    limit = len(os.listdir("/proc/%d/fd" % pid)) + spare
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    conns = []
    for _ in range(clients):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(env.socket)
        conns.append(c)
    return conns


def wait_for(cond, timeout=TIMEOUT, interval=0.02):
    """Poll COND until it returns a true value or TIMEOUT passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            return v
        time.sleep(interval)


class Daemon:
    """jobrund running in the foreground with -e; its log collected."""

    def __init__(self, env, config, args=(), preexec_fn=None):
        self.env = env
        self.proc = subprocess.Popen([JOBRUND, "-e", "-c", config] + list(args),
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        self.lines = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        env.daemons.append(self)

    def _read(self):
        for line in self.proc.stderr:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def log(self):
        with self.lock:
            return list(self.lines)

    def count(self, pattern):
        rx = re.compile(pattern)
        return sum(1 for l in self.log() if rx.search(l))

    def wait_log(self, pattern, n=1, timeout=TIMEOUT):
        """Wait until PATTERN has matched N log lines; True if it did."""
        return bool(wait_for(lambda: self.count(pattern) >= n, timeout))

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)


def main(tests):
    """Run each test function with a fresh Env; print the plan."""
    tap = Tap()
    for test in tests:
        env = Env(tap)
        try:
            test(tap, env)
        except Exception as e:  # a crashed test is a failed test
            import traceback
            tap.ok(False, "%s raised %s" % (test.__name__, type(e).__name__),
                   traceback.format_exc())
        finally:
            env.cleanup()
    tap.done()
