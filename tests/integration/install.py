"""Installing jobrund: `make install` into a temporary prefix puts every
file where design.md says; systemd accepts the installed unit; the example
out-of-tree plugin (examples/plugin) builds against the installed header
through pkg-config and runs in the installed daemon, in both modes; and
`make uninstall` leaves nothing behind.

How: the sources are copied with `make distdir` and configured afresh
with --prefix in a temporary directory (with the same configure options as
this build), then built and installed there.  Installing this build tree
itself with `make install prefix=...` would not do: the daemon's compiled-in
paths (its config, the worker, the plugin directory) and jobrund.pc keep
the configured prefix, so the installed daemon would look outside the
temporary prefix.  A build of its own costs some seconds, and tests exactly
what a user gets.  Everything is removed at the end, pass or fail.
"""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile

from jrtest import BUILDDIR, TIMEOUT, Tap

SRCDIR = os.environ.get("JR_SRCDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_TIMEOUT = max(TIMEOUT, 900.0)


def clean_env(**extra):
    """The environment for a nested make: none of the outer make's
    variables (its jobserver, its DESTDIR)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES",
                        "DESTDIR", "GNUMAKEFLAGS")}
    env.update(extra)
    return env


def sh(args, cwd=None, env=None, timeout=BUILD_TIMEOUT):
    """Run ARGS; (status, stdout and stderr together)."""
    try:
        p = subprocess.run(args, cwd=cwd, env=env or clean_env(), timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired as e:
        return -1, "timed out after %ss\n%s" % (timeout, e.output or "")
    return p.returncode, p.stdout


def tail(text, n=40):
    return "\n".join(text.splitlines()[-n:])


def configure_args():
    """This build's configure options, without those the nested build sets
    itself."""
    rc, out = sh([os.path.join(BUILDDIR, "config.status"), "--config"])
    if rc != 0:
        return []
    drop = ("--prefix", "--srcdir", "--cache-file", "--with-systemdsystemunitdir",
            "-C", "--config-cache")
    return [a for a in shlex.split(out) if not a.startswith(drop)]


def installed_files(prefix):
    found = []
    for root, dirs, files in os.walk(prefix):
        for f in files:
            found.append(os.path.relpath(os.path.join(root, f), prefix))
    return sorted(found)


def test_install(tap, tmp):
    src = os.path.join(tmp, "src")
    build = os.path.join(tmp, "build")
    prefix = os.path.join(tmp, "prefix")
    unitdir = os.path.join(prefix, "lib", "systemd", "system")
    os.mkdir(build)

    rc, out = sh(["make", "-C", BUILDDIR, "distdir", "distdir=" + src])
    if not tap.ok(rc == 0, "make distdir copies the sources", tail(out)):
        return
    rc, out = sh([os.path.join(src, "configure"), "--prefix=" + prefix,
                  "--with-systemdsystemunitdir=" + unitdir] + configure_args(),
                 cwd=build)
    if not tap.ok(rc == 0, "configure --prefix=TMP", tail(out)):
        return
    # One job at a time: make check runs other tests beside this one, and
    # some of them measure time.
    rc, out = sh(["make"], cwd=build)
    if not tap.ok(rc == 0, "make", tail(out)):
        return
    rc, out = sh(["make", "install"], cwd=build)
    if not tap.ok(rc == 0, "make install", tail(out)):
        return

    # The layout of design.md, "Programs and files".
    expected = ["sbin/jobrund", "libexec/jobrund/jobrund-worker",
                "lib/jobrund/square.so", "lib/jobrund/cpu.so",
                "lib/jobrund/sleep.so", "lib/jobrund/exec.so",
                "include/jobrund/plugin.h", "lib/pkgconfig/jobrund.pc",
                "etc/jobrund.conf", "lib/systemd/system/jobrund.service",
                "share/man/man8/jobrund.8", "share/man/man5/jobrund.conf.5",
                "share/man/man1/jobrunctl.1", "share/man/man3/jobrund-plugin.3"]
    if os.path.exists(os.path.join(BUILDDIR, "jobrunctl")):
        expected.append("bin/jobrunctl")
    files = installed_files(prefix)
    for f in expected:
        tap.ok(f in files, "installed: P/" + f)
    for f in ("sbin/jobrund", "libexec/jobrund/jobrund-worker", "bin/jobrunctl"):
        if f in expected:
            tap.ok(os.access(os.path.join(prefix, f), os.X_OK), "executable: P/" + f)
    tap.eq([f for f in files if f.endswith(".la")], [],
           "no libtool .la file is installed")
    plugins = sorted(f for f in files if f.startswith("lib/jobrund/"))
    modes = {f: stat.S_IMODE(os.stat(os.path.join(prefix, f)).st_mode) & 0o022
             for f in plugins}
    tap.eq({f: m for f, m in modes.items() if m}, {},
           "installed plugins are writable by their owner only (the loader's rule)")

    # The unit names the installed daemon, and systemd accepts it.
    unit = os.path.join(unitdir, "jobrund.service")
    text = open(unit).read() if os.path.exists(unit) else ""
    tap.ok("ExecStart=%s/sbin/jobrund -c %s/etc/jobrund.conf\n" % (prefix, prefix) in text,
           "the unit's ExecStart is the installed daemon and config", text)
    tap.eq(re.findall(r"@[a-z_]+@", text), [], "no @variable@ is left in the unit")
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # It also runs man(1) on each Documentation= page: the installed
        # ones, through MANPATH.
        args = [analyze, "verify", unit]
        if not shutil.which("man"):
            args.insert(2, "--man=no")
        rc, out = sh(args, env=clean_env(SYSTEMD_LOG_COLOR="0",
                                         MANPATH=os.path.join(prefix, "share", "man")))
        tap.ok(rc == 0 and "jobrund.service" not in out,
               "systemd-analyze verify accepts the unit (no warning)", out)
    else:
        tap.ok(True, "systemd-analyze verify # SKIP no systemd-analyze")

    # pkg-config finds the installed header, and says where plugins go.
    pcenv = clean_env(PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"))
    rc, out = sh(["pkg-config", "--cflags", "jobrund"], env=pcenv)
    tap.eq(out.split(), ["-I" + os.path.join(prefix, "include")],
           "pkg-config --cflags jobrund: the installed include directory")
    rc, out = sh(["pkg-config", "--variable=plugindir", "jobrund"], env=pcenv)
    tap.eq(out.strip(), os.path.join(prefix, "lib", "jobrund"),
           "pkg-config --variable=plugindir jobrund: the installed plugin directory")

    # The example plugin project, outside any source tree.
    example = os.path.join(tmp, "example")
    shutil.copytree(os.path.join(SRCDIR, "examples", "plugin"), example)
    rc, out = sh(["make"], cwd=example, env=pcenv)
    tap.ok(rc == 0 and os.path.exists(os.path.join(example, "repeat.so")),
           "the example plugin builds against the installed header", out)
    tap.ok("-I" + os.path.join(prefix, "include") in out,
           "with the flags of the installed jobrund.pc", out)
    rc, out = sh(["make", "install"], cwd=example, env=pcenv)
    tap.ok(rc == 0 and os.path.exists(os.path.join(prefix, "lib", "jobrund", "repeat.so")),
           "its make install puts it in the installed plugin directory", out)

    jobrund = os.path.join(prefix, "sbin", "jobrund")
    rc, out = sh([jobrund, "-t", "-c", os.path.join(prefix, "etc", "jobrund.conf")],
                 timeout=TIMEOUT)
    tap.ok(rc == 0 and "configuration OK" in out,
           "the installed daemon accepts the installed sample config "
           "(its default plugin_dir is the installed one)", out)

    # No plugin_dir: the compiled-in default must be P/lib/jobrund.
    conf = os.path.join(tmp, "example.conf")
    with open(conf, "w") as f:
        f.write("""jobs = (
  { name = "echoes"; plugin = "repeat"; mode = "thread"; workers = 2;
    inputs = [ "hey", "ho" ]; settings = { times = 3; separator = ", "; }; },
  { name = "echoes_p"; plugin = "repeat"; mode = "process";
    inputs = [ "x" ]; settings = { times = 2; }; }
);
""")
    os.chmod(conf, 0o644)
    p = subprocess.run([jobrund, "-c", conf, "--once"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=TIMEOUT, env=clean_env())
    results = {}
    for line in p.stdout.splitlines():
        try:
            r = json.loads(line)
            results[(r["job"], r["index"])] = (r["status"], r["output"], r["mode"])
        except (ValueError, KeyError):
            pass
    tap.eq(p.returncode, 0, "the installed jobrund --once runs the example plugin")
    tap.eq(results, {("echoes", 0): ("ok", "hey, hey, hey", "thread"),
                     ("echoes", 1): ("ok", "ho, ho, ho", "thread"),
                     ("echoes_p", 0): ("ok", "x x", "process")},
           "in thread mode and in process mode (the installed worker)")
    bad = os.path.join(tmp, "bad.conf")
    with open(bad, "w") as f:
        f.write('jobs = ( { name = "e"; plugin = "repeat"; mode = "thread";\n'
                '  settings = { times = 0; }; } );\n')
    os.chmod(bad, 0o644)
    rc, out = sh([jobrund, "-t", "-c", bad], timeout=TIMEOUT)
    tap.ok(rc == 1 and bad + ":2: job 'e': settings.times: must be from 1 to 1000" in out,
           "its settings are validated by jobrund -t, with FILE:LINE", out)

    # Uninstall: what make install put there goes (the example's plugin is
    # the user's to remove).
    os.unlink(os.path.join(prefix, "lib", "jobrund", "repeat.so"))
    rc, out = sh(["make", "uninstall"], cwd=build)
    tap.ok(rc == 0, "make uninstall", tail(out))
    tap.eq(installed_files(prefix), [], "make uninstall removes every installed file")


def main():
    tap = Tap()
    tmp = tempfile.mkdtemp(prefix="jobrund-install-")
    os.chmod(tmp, 0o755)
    try:
        test_install(tap, tmp)
    except Exception:  # a crashed test is a failed test
        import traceback
        tap.ok(False, "test_install raised", traceback.format_exc())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        tap.ok(not os.path.exists(tmp), "the temporary directory is removed")
    tap.done()


main()
