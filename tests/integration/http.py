"""The http plugin against a local HTTP server that this test starts on
127.0.0.1 (a port chosen at run time): success, statuses, redirects, a
slow response past the plugin's timeout, connection refused, cancellation
mid-transfer, bodies in the output, and bad settings at -t time.

The server's slow and stalling handlers wait on an event with a bound, and
watch for the client going away, so nothing here sleeps blindly.
"""

import os
import sys

# This file is named http.py: keep its directory out of the way while the
# standard library's http package is imported.
HERE = os.path.dirname(os.path.abspath(__file__))
_saved_path = list(sys.path)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
import http.server  # noqa: E402
sys.path[:] = _saved_path

import json  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import socketserver  # noqa: E402
import threading  # noqa: E402

from jrtest import JOBRUND, TIMEOUT, main, once, run, wait_for  # noqa: E402

BODY = b"hello from jrtest\n"
BINARY = b'\xff"quote" back\\slash\n\x01\xc3\xa9'
BIG = b"x" * 200000
STALL_TOTAL = 1000000   # announced; only STALL_SENT ever sent
STALL_SENT = 4096


class Server:
    """A threaded HTTP server on 127.0.0.1:0, in a thread of this process."""

    def __init__(self):
        self.release = threading.Event()     # ends slow and stalled replies
        self.lock = threading.Lock()
        self.gone = 0                        # stalled clients that hung up
        self.stalled = 0                     # stalled replies started
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def reply(self, code, body, ctype="text/plain", extra=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/ok":
                    self.reply(200, BODY)
                elif path == "/binary":
                    self.reply(200, BINARY, "application/octet-stream")
                elif path == "/big":
                    self.reply(200, BIG)
                elif path == "/redirect":
                    self.reply(302, b"", extra=[("Location", "/ok")])
                elif path == "/slow":
                    srv.release.wait(TIMEOUT * 2)
                    self.reply(200, BODY)
                elif path == "/stall":
                    self.stall()
                else:
                    self.reply(404, b"no such thing\n")

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode()
                self.reply(200, json.dumps({
                    "method": self.command, "x_test": self.headers.get("X-Test"),
                    "body": body}).encode(), "application/json")

            do_PUT = do_POST

            def stall(self):
                """Announce a big body, send a little, then wait until the
                client hangs up or the test releases us."""
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(STALL_TOTAL))
                self.end_headers()
                self.wfile.write(b"s" * STALL_SENT)
                self.wfile.flush()
                with srv.lock:
                    srv.stalled += 1
                sock = self.connection
                while not srv.release.is_set():
                    r, _, _ = select.select([sock], [], [], 0.05)
                    if r:
                        try:
                            data = sock.recv(1, socket.MSG_PEEK)
                        except OSError:
                            data = b""
                        if not data:
                            with srv.lock:
                                srv.gone += 1
                            self.close_connection = True
                            return
                self.close_connection = True

        class TServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass    # clients hang up on purpose here (aborts, timeouts)

        self.httpd = TServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def count(self, what):
        with self.lock:
            return getattr(self, what)

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)


def hjob(name, mode, inputs=None, workers=2, extra="", settings=""):
    ins = ""
    if inputs is not None:
        ins = "inputs = ( %s ); " % ", ".join('"%s"' % i for i in inputs)
    return ('{ name = "%s"; plugin = "http"; mode = "%s"; workers = %d; %s%s\n'
            '    settings = { %s }; }' % (name, mode, workers, ins, extra, settings))


def both(name, inputs, extra="", settings="", workers=2):
    return ",\n".join(hjob("%s_%s" % (name, m), m, inputs, workers, extra, settings)
                      for m in ("thread", "process"))


def results(res, job):
    return [r for r in res if r.get("job") == job]


def output(r):
    try:
        return json.loads(r.get("output") or "null")
    except ValueError:
        return {"unparsable": r.get("output")}


def with_server(test):
    def wrapped(tap, env):
        srv = Server()
        try:
            test(tap, env, srv)
        finally:
            srv.stop()
    wrapped.__name__ = test.__name__
    return wrapped


@with_server
def test_success(tap, env, srv):
    cfg = env.config(",\n".join([
        both("body", [srv.url("/ok")], settings="include_body = true;"),
        both("plain", [srv.url("/ok")]),
        both("head", [srv.url("/ok")], settings='method = "HEAD";'),
        hjob("byurl", "thread", settings='url = "%s";' % srv.url("/ok"))]))
    rc, res, err = once(cfg)
    tap.eq(rc, 0, "GET and HEAD of a local URL succeed")
    got = results(res, "byurl")
    tap.ok(len(got) == 1 and got[0]["status"] == "ok" and
           output(got[0]).get("url") == srv.url("/ok"),
           "a job without inputs fetches settings.url", json.dumps(got))
    for mode in ("thread", "process"):
        got = results(res, "body_" + mode)
        o = output(got[0]) if got else {}
        tap.ok(len(got) == 1 and got[0]["status"] == "ok" and
               o.get("status") == 200 and o.get("bytes") == len(BODY) and
               o.get("body") == BODY.decode() and o.get("url") == srv.url("/ok") and
               o.get("content_type") == "text/plain" and
               isinstance(o.get("time_s"), float),
               "%s: the output has url, status, bytes, time, type and body" % mode,
               json.dumps(got))
        got = results(res, "plain_" + mode)
        o = output(got[0]) if got else {}
        tap.ok(o.get("status") == 200 and o.get("bytes") == len(BODY) and "body" not in o,
               "%s: without include_body the body is counted, not kept" % mode,
               json.dumps(got))
        got = results(res, "head_" + mode)
        o = output(got[0]) if got else {}
        tap.ok(o.get("status") == 200 and o.get("bytes") == 0,
               "%s: HEAD gets the status and no body" % mode, json.dumps(got))


@with_server
def test_many_in_threads(tap, env, srv):
    urls = [srv.url("/ok?n=%d" % i) for i in range(40)]
    cfg = env.config(hjob("many", "thread", urls, workers=4))
    rc, res, err = once(cfg)
    tap.eq((rc, [r["status"] for r in res]), (0, ["ok"] * 40),
           "40 fetches on 4 threads all succeed (a handle per thread)")


@with_server
def test_statuses(tap, env, srv):
    cfg = env.config(",\n".join([
        both("missing", [srv.url("/missing")]),
        both("want404", [srv.url("/missing")], settings='expect_status = "404";'),
        both("redirect", [srv.url("/redirect")]),
        both("follow", [srv.url("/redirect")],
             settings='follow_redirects = true; expect_status = ["200"];')]))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "a 404 and an unfollowed redirect fail the run")
    for mode in ("thread", "process"):
        got = results(res, "missing_" + mode)
        tap.ok(len(got) == 1 and got[0]["status"] == "failed" and
               "HTTP status 404 Not Found, expected 2xx" in got[0].get("error", "") and
               output(got[0]).get("status") == 404,
               "%s: a 404 fails, its error names the status" % mode, json.dumps(got))
        got = results(res, "want404_" + mode)
        tap.eq([r["status"] for r in got], ["ok"],
               "%s: expect_status = \"404\" accepts it" % mode)
        got = results(res, "redirect_" + mode)
        tap.ok(len(got) == 1 and got[0]["status"] == "failed" and
               "follow_redirects" in got[0].get("error", "") and
               output(got[0]).get("redirect") == srv.url("/ok"),
               "%s: a redirect is not followed by default, and says so" % mode,
               json.dumps(got))
        got = results(res, "follow_" + mode)
        tap.ok(len(got) == 1 and got[0]["status"] == "ok" and
               output(got[0]).get("url") == srv.url("/ok"),
               "%s: follow_redirects = true follows it" % mode, json.dumps(got))


@with_server
def test_post_and_bodies(tap, env, srv):
    cfg = env.config(",\n".join([
        both("post", [srv.url("/echo")],
             settings='method = "POST"; body = "a=1&b=\\"2\\""; headers = ["X-Test: yes"]; '
                      'include_body = true;'),
        both("binary", [srv.url("/binary")], settings="include_body = true;"),
        both("big", [srv.url("/big")], settings="max_bytes = 1000;"),
        both("bigbody", [srv.url("/big")], settings="include_body = true;")]))
    rc, res, err = once(cfg)
    for mode in ("thread", "process"):
        got = results(res, "post_" + mode)
        echo = {}
        if got:
            try:
                echo = json.loads(output(got[0]).get("body", ""))
            except ValueError:
                pass
        tap.eq(echo, {"method": "POST", "x_test": "yes", "body": 'a=1&b="2"'},
               "%s: POST sends the body and the headers" % mode)
        got = results(res, "binary_" + mode)
        tap.ok(len(got) == 1 and output(got[0]).get("body") ==
               BINARY.decode("utf-8", "replace"),
               "%s: a binary body is valid JSON, bad UTF-8 replaced" % mode,
               json.dumps(got))
        got = results(res, "big_" + mode)
        tap.ok(len(got) == 1 and got[0]["status"] == "failed" and
               "max_bytes" in got[0].get("error", ""),
               "%s: a response over max_bytes fails" % mode, json.dumps(got))
        got = results(res, "bigbody_" + mode)
        o = output(got[0]) if got else {}
        tap.ok(o.get("bytes") == len(BIG) and len(o.get("body", "")) == 65536 and
               o.get("body_truncated") is True,
               "%s: the body kept in the output stops at 64 KiB" % mode,
               json.dumps(o)[:300])


@with_server
def test_slow_past_plugin_timeout(tap, env, srv):
    cfg = env.config(both("slow", [srv.url("/slow")], settings="timeout = 0.3;"))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "a response slower than settings.timeout fails the run")
    for mode in ("thread", "process"):
        got = results(res, "slow_" + mode)
        tap.ok(len(got) == 1 and got[0]["status"] == "failed" and
               "timed out" in got[0].get("error", "") and
               "settings.timeout = 0.3s" in got[0].get("error", ""),
               "%s: it fails as timed out, naming settings.timeout" % mode,
               json.dumps(got))
    tap.ok(not srv.release.is_set(), "(the server was still holding the reply)")


def test_connection_refused(tap, env):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()       # nothing listens there now
    url = "http://127.0.0.1:%d/" % port
    cfg = env.config(both("refused", [url, "not a url", "file:///etc/passwd"]))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "connection refused fails the run")
    for mode in ("thread", "process"):
        got = results(res, "refused_" + mode)
        tap.ok(len(got) == 3 and got[0]["status"] == "failed" and
               "Connection refused" in got[0].get("error", "") and
               str(port) in got[0].get("error", ""),
               "%s: a refused connection fails with the reason" % mode, json.dumps(got))
        tap.ok(len(got) == 3 and all(r["status"] == "failed" and
                                     r.get("error", "").startswith("bad URL")
                                     for r in got[1:]),
               "%s: a malformed URL and a file:// URL are refused" % mode,
               json.dumps(got))


@with_server
def test_cancel_mid_transfer(tap, env, srv):
    cfg = env.config(both("stall", [srv.url("/stall")], extra='timeout = "2s";',
                          workers=1))
    rc, res, err = once(cfg)
    tap.eq(rc, 3, "--once returns while the server still stalls")
    tap.ok(not srv.release.is_set() and srv.count("stalled") == 2,
           "both transfers had started and stalled", srv.count("stalled"))
    for mode in ("thread", "process"):
        got = results(res, "stall_" + mode)
        tap.ok(len(got) == 1 and got[0]["status"] == "timeout",
               "%s: a transfer stalled past the job's timeout ends as timeout" % mode,
               json.dumps(got))
    got = results(res, "stall_thread")
    tap.ok(got and "cancelled after" in got[0].get("error", "") and
           "%d bytes received" % STALL_SENT in got[0].get("error", ""),
           "thread: the plugin aborted the transfer itself, mid-body", json.dumps(got))
    tap.ok(wait_for(lambda: srv.count("gone") == 2),
           "the server saw both connections closed", srv.count("gone"))


def test_bad_settings(tap, env):
    jobs = """
  { name = "bad"; plugin = "http"; mode = "thread"; inputs = [ "http://127.0.0.1/" ];
    settings = {
      method = "FETCH";                 # L-method
      url = "ftp://example.org/";       # L-url
      headers = [ "X-Ok: 1", "no colon here" ];   # L-headers
      expect_status = [ "2xx", "600" ]; # L-expect
      timeout = 0;                      # L-timeout
      colour = "red";                   # L-colour
    }; },
  { name = "bad2"; plugin = "http"; mode = "process";
    settings = {
      body = "x";                       # L-body
      max_bytes = -5;                   # L-max
    }; },
  { name = "good"; plugin = "http"; mode = "thread";
    settings = { url = "https://example.org/"; method = "PUT"; body = "x";
                 expect_status = [ "200-299", "304" ]; timeout = 2.5; }; }"""
    cfg = env.config(jobs)
    with open(cfg) as f:
        text = f.read().splitlines()
    rc, out, err = run([JOBRUND, "-c", cfg, "-t"])
    tap.eq(rc, 1, "-t fails on bad http settings")
    lines = err.splitlines()
    for marker, words in (("L-method", ["FETCH"]), ("L-url", ["ftp://", "http://"]),
                          ("L-headers", ["no colon here"]), ("L-expect", ["600"]),
                          ("L-timeout", ["timeout", "0"]), ("L-colour", ["colour"]),
                          ("L-body", ["GET request has no body"]),
                          ("L-max", ["max_bytes", "-5"])):
        n = next(i + 1 for i, l in enumerate(text) if marker in l)
        want = "%s:%d: " % (cfg, n)
        hit = [l for l in lines if l.startswith(want)]
        tap.ok(hit and all(w in hit[0] for w in words),
               "reported at %s naming %s" % (want, ", ".join(words)), err)
    tap.ok(not any("'good'" in l for l in lines), "the good job is not blamed", err)


def test_no_url(tap, env):
    cfg = env.config(",\n".join([hjob("nourl", "thread"),
                                 hjob("nourl_p", "process")]))
    rc, res, err = once(cfg)
    tap.ok(rc == 3 and [r["status"] for r in res] == ["failed", "failed"] and
           all("needs a URL" in r.get("error", "") for r in res),
           "a job without inputs and without settings.url fails its task",
           json.dumps(res))


main([test_success, test_many_in_threads, test_statuses, test_post_and_bodies,
      test_slow_past_plugin_timeout, test_connection_refused,
      test_cancel_mid_transfer, test_bad_settings, test_no_url])
