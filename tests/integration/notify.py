"""sd_notify: jobrund started with NOTIFY_SOCKET tells the listener on that
datagram socket READY=1 at start-up, RELOADING=1 (with MONOTONIC_USEC) then
READY=1 around a good reload and around a refused one (whose error shows
in STATUS=), STOPPING=1 at SIGTERM, and WATCHDOG=1 every WATCHDOG_USEC/2
(unless WATCHDOG_PID names another process); every message comes from the
daemon itself, never from a worker.  jobrund speaks the protocol itself,
without libsystemd (notify.c): these tests check that the daemon under test
has no libsystemd mapped, so they exercise that code.
"""

import os
import signal
import socket
import struct
import threading
import time

from jrtest import Daemon, main, wait_for


class Listener:
    """A NOTIFY_SOCKET: a datagram socket collecting (pid, fields) per
    message, the sender's pid from its credentials (SO_PASSCRED), as
    systemd's NotifyAccess= sees it."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages = []
        self.lock = threading.Lock()
        self.done = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        space = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self.done:
            try:
                data, anc, flags, addr = self.sock.recvmsg(65536, space)
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[:struct.calcsize("3i")])[0]
            fields = {}
            for line in data.decode(errors="replace").split("\n"):
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields[k] = v
            with self.lock:
                self.messages.append((pid, fields, time.monotonic()))

    def all(self):
        with self.lock:
            return list(self.messages)

    def states(self):
        """The sequence of state changes, ignoring STATUS and WATCHDOG."""
        out = []
        for pid, f, t in self.all():
            for k in ("READY", "RELOADING", "STOPPING"):
                if f.get(k) == "1":
                    out.append(k)
        return out

    def wait_states(self, n):
        return wait_for(lambda: len(self.states()) >= n)

    def close(self):
        self.done = True
        self.reader.join(5)
        self.sock.close()


def start(env, config, notify, watchdog_usec=None, watchdog_pid=None):
    """Start the daemon with NOTIFY_SOCKET (and WATCHDOG_USEC, WATCHDOG_PID)
    set."""
    saved = dict(os.environ)
    os.environ["NOTIFY_SOCKET"] = notify
    os.environ.pop("WATCHDOG_USEC", None)
    os.environ.pop("WATCHDOG_PID", None)
    if watchdog_usec is not None:
        os.environ["WATCHDOG_USEC"] = str(watchdog_usec)
    if watchdog_pid is not None:
        os.environ["WATCHDOG_PID"] = str(watchdog_pid)
    try:
        return Daemon(env, config)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def mono_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_sequence(tap, env):
    good = """
  { name = "n_proc"; plugin = "square"; mode = "process"; workers = 2;
    inputs = [ 1, 2 ]; },
  { name = "n_thr"; plugin = "square"; mode = "thread"; workers = 3;
    inputs = [ 3 ]; }"""
    cfg = env.config(good)
    path = os.path.join(env.dir, "notify.sock")
    lis = Listener(path)
    try:
        d = start(env, cfg, path)
        tap.ok(lis.wait_states(1), "a message arrives", d.log()[-10:])
        with open("/proc/%d/maps" % d.pid) as f:
            libs = set(l.split()[-1] for l in f if ".so" in l)
        tap.eq([l for l in libs if "libsystemd" in l], [],
               "the daemon speaks the protocol itself: no libsystemd mapped")
        msgs = lis.all()
        first = msgs[0][1] if msgs else {}
        tap.eq(lis.states()[:1], ["READY"], "start-up: READY=1")
        tap.ok(first.get("STATUS", "").startswith("2 jobs, "),
               "with a STATUS= line counting jobs", first)

        def status_seen(text):
            return any(text in f.get("STATUS", "") for p, f, t in lis.all())
        tap.ok(wait_for(lambda: status_seen("2 worker processes") and
                        status_seen("3 worker threads")),
               "STATUS= is updated as workers start, counting processes and threads",
               [f.get("STATUS") for p, f, t in lis.all()])
        tap.ok(d.wait_log(r"job n_proc: run 1 finished"), "the jobs run", d.log()[-10:])

        # A good reload.
        env.config(good.replace("workers = 3", "workers = 4"))
        t0 = mono_usec()
        d.signal(signal.SIGHUP)
        tap.ok(lis.wait_states(3), "a good reload: two more messages", lis.states())
        t1 = mono_usec()
        tap.eq(lis.states()[1:3], ["RELOADING", "READY"], "RELOADING=1, then READY=1")
        rel = [f for p, f, t in lis.all() if f.get("RELOADING") == "1"]
        usec = rel[0].get("MONOTONIC_USEC", "") if rel else ""
        tap.ok(usec.isdigit() and t0 <= int(usec) <= t1,
               "RELOADING=1 carries MONOTONIC_USEC, CLOCK_MONOTONIC in us",
               "%s not in [%d, %d]" % (usec, t0, t1))
        tap.ok(d.wait_log(r"reloaded "), "the reload was applied")

        # A refused reload: READY=1 again, and the error in STATUS=.
        env.config(good + """,
  { name = "n_bad"; plugin = "square"; mode = "thread"; workers = 0; }""")
        d.signal(signal.SIGHUP)
        tap.ok(lis.wait_states(5), "a refused reload: two more messages",
               "%s\n%s" % (lis.states(), "\n".join(d.log()[-20:])))
        tap.eq(lis.states()[3:5], ["RELOADING", "READY"],
               "RELOADING=1, then READY=1, refused or not")
        ready = [f for p, f, t in lis.all() if f.get("READY") == "1"]
        status = ready[-1].get("STATUS", "") if ready else ""
        tap.ok("last error" in status and "reload of " + cfg + " failed" in status,
               "READY=1 after it says in STATUS= why the reload failed", status)
        tap.ok("\n" not in status, "STATUS= is one line")

        # Stop.
        d.signal(signal.SIGTERM)
        tap.eq(d.wait_exit(), 0, "SIGTERM: exit 0")
        tap.eq(lis.states(), ["READY", "RELOADING", "READY", "RELOADING", "READY",
                              "STOPPING"],
               "the whole sequence, STOPPING=1 last")
        pids = set(p for p, f, t in lis.all())
        tap.eq(pids, {d.pid}, "every message comes from the daemon's own pid "
               "(NotifyAccess=main), none from a worker")
        tap.eq([f for p, f, t in lis.all() if "WATCHDOG" in f], [],
               "no WATCHDOG=1 without WATCHDOG_USEC")
    finally:
        lis.close()


def test_watchdog(tap, env):
    cfg = env.config("""
  { name = "w_idle"; plugin = "square"; mode = "thread"; schedule = "@manual"; }""")
    # The abstract namespace, as systemd may use: '@' stands for the NUL.
    name = "@jobrund-test-%d-%d" % (os.getpid(), time.monotonic_ns())
    lis = Listener("\0" + name[1:])
    try:
        d = start(env, cfg, name, watchdog_usec=200000)
        tap.ok(lis.wait_states(1), "an abstract NOTIFY_SOCKET works: READY=1",
               d.log()[-10:])

        def pings():
            return [t for p, f, t in lis.all() if f.get("WATCHDOG") == "1"]
        tap.ok(wait_for(lambda: len(pings()) >= 5),
               "WATCHDOG=1 keeps coming with WATCHDOG_USEC=200000", len(pings()))
        p = pings()
        gaps = [b - a for a, b in zip(p, p[1:])]
        # Every 100 ms; a generous bound for a loaded machine: well under
        # the 200 ms after which systemd would act, on average.
        tap.ok(gaps and 0.05 < sum(gaps) / len(gaps) < 0.2,
               "about every WATCHDOG_USEC/2", gaps)
        d.signal(signal.SIGTERM)
        tap.eq(d.wait_exit(), 0, "exit 0")
        tap.eq(lis.states()[-1:], ["STOPPING"], "STOPPING=1 at the end")
    finally:
        lis.close()


def test_watchdog_not_ours(tap, env):
    """WATCHDOG_PID names another process (our parent was meant): no
    pings, though the other messages go on."""
    cfg = env.config("""
  { name = "w_other"; plugin = "square"; mode = "thread"; schedule = "@manual"; }""")
    path = os.path.join(env.dir, "notify.sock")
    lis = Listener(path)
    try:
        d = start(env, cfg, path, watchdog_usec=100000, watchdog_pid=os.getpid())
        tap.ok(lis.wait_states(1), "READY=1", d.log()[-10:])
        time.sleep(0.5)         # five periods of WATCHDOG_USEC/2
        tap.eq([f for p, f, t in lis.all() if "WATCHDOG" in f], [],
               "no WATCHDOG=1 when WATCHDOG_PID is not the daemon's pid")
        d.signal(signal.SIGTERM)
        tap.eq(d.wait_exit(), 0, "exit 0")
        tap.eq(lis.states(), ["READY", "STOPPING"], "READY=1, STOPPING=1")
    finally:
        lis.close()


def test_bad_socket(tap, env):
    """A NOTIFY_SOCKET that is neither an absolute path nor @abstract (a
    relative path; systemd's vsock: addresses) is refused with a warning;
    the daemon runs all the same."""
    cfg = env.config("""
  { name = "b"; plugin = "square"; mode = "thread"; inputs = [ 3 ]; }""")
    d = start(env, cfg, "relative/notify.sock")
    tap.ok(d.wait_log(r"job b run 1 task 0 input=3: ok output=9"), "the daemon runs",
           d.log()[-10:])
    tap.ok(d.wait_log(r"NOTIFY_SOCKET=relative/notify.sock: not a socket path"),
           "the unusable NOTIFY_SOCKET is logged", d.log()[-10:])
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "and stops cleanly")


def test_no_socket(tap, env):
    """Without NOTIFY_SOCKET nothing is sent, and nothing fails."""
    cfg = env.config("""
  { name = "q"; plugin = "square"; mode = "thread"; inputs = [ 2 ]; }""")
    saved = os.environ.pop("NOTIFY_SOCKET", None)
    try:
        d = Daemon(env, cfg)
    finally:
        if saved is not None:
            os.environ["NOTIFY_SOCKET"] = saved
    tap.ok(d.wait_log(r"job q run 1 task 0 input=2: ok output=4"), "the daemon runs")
    d.signal(signal.SIGTERM)
    tap.eq(d.wait_exit(), 0, "and stops cleanly")
    tap.eq([l for l in d.log() if "NOTIFY" in l or "notify" in l], [],
           "without a word about notification")


main([test_sequence, test_watchdog, test_watchdog_not_ours, test_bad_socket,
      test_no_socket])
