"""The man pages: each renders without a warning (man -l, groff -ww,
mandoc -T lint: whichever are installed; skipped when none is), no
@variable@ is left unsubstituted, jobrund.conf(5) documents every key
daemon/config.c accepts, and the example in jobrund-plugin(3) is
examples/plugin/repeat.c.
"""

import os
import re
import shutil
import subprocess
import sys

from jrtest import BUILDDIR, TIMEOUT, Tap

SRCDIR = os.environ.get("JR_SRCDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
PAGES = ["jobrund.8", "jobrund.conf.5", "jobrunctl.1", "jobrund-plugin.3"]


def page(name):
    return os.path.join(BUILDDIR, "doc", name)


def render(args):
    """Run a renderer: (status, stdout, stderr)."""
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80", MANPAGER="cat",
               PAGER="cat")
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=TIMEOUT, env=env)
    return p.returncode, p.stdout, p.stderr


def renderers():
    found = []
    if shutil.which("man"):
        # --warnings hands -ww to groff: every warning, on stderr.
        found.append(("man -l", lambda p: ["man", "--warnings", "-l", "-P", "cat", p]))
    if shutil.which("groff"):
        found.append(("groff -man -ww", lambda p: ["groff", "-man", "-ww", "-z", "-Tutf8", p]))
    if shutil.which("mandoc"):
        found.append(("mandoc -T lint", lambda p: ["mandoc", "-T", "lint", p]))
    return found


def config_keys():
    """The keys daemon/config.c accepts: its job_keys, top_keys and
    rlimit_names tables."""
    src = open(os.path.join(SRCDIR, "daemon", "config.c")).read()
    keys = {}
    for table in ("job_keys", "top_keys"):
        m = re.search(r"\b%s\[\] = \{(.*?)\n\};" % table, src, re.S)
        keys[table] = re.findall(r'\{ "([a-z_]+)",', m.group(1)) if m else []
    m = re.search(r"rlimit_names\[JR_RLIMITS\] = \{(.*?)\};", src, re.S)
    keys["rlimits"] = re.findall(r'= "([a-z]+)"', m.group(1)) if m else []
    return keys


def unroff(text):
    """The text of roff source, for comparing code: undo our escapes."""
    text = re.sub(r"^\\&", "", text, flags=re.M)
    for esc, ch in (("\\-", "-"), ("\\(aq", "'"), ("\\(dq", '"'), ("\\(ga", "`"),
                    ("\\e", "\\")):
        text = text.replace(esc, ch)
    return text


def main():
    tap = Tap()
    tools = renderers()
    if not tools:
        print("1..0 # SKIP no man page renderer (man, groff or mandoc) installed")
        sys.exit(0)
    for name in PAGES:
        path = page(name)
        if not tap.ok(os.path.exists(path), "%s is built" % name):
            continue
        for tool, argv in tools:
            rc, out, err = render(argv(path))
            tap.ok(rc == 0 and err.strip() == "" and (tool != "mandoc -T lint"
                                                       or out.strip() == ""),
                   "%s: %s renders it without a warning" % (name, tool),
                   (err + out)[-3000:])
        text = open(path).read()
        tap.eq(re.findall(r"@[A-Za-z_]+@", text), [],
               "%s: every @variable@ is substituted" % name)

    # jobrund.conf(5): every key, each as a .TP entry of its own.
    conf = open(page("jobrund.conf.5")).read() if os.path.exists(page("jobrund.conf.5")) else ""
    entries = set(re.findall(r"^\.TP\n\.B ([a-z_]+)\n", conf, re.M))
    keys = config_keys()
    tap.ok(all(keys.values()), "the key tables of config.c are found", keys)
    for table, names in sorted(keys.items()):
        missing = [k for k in names if k not in entries]
        tap.eq(missing, [], "jobrund.conf(5) documents every key of %s" % table)

    # jobrund-plugin(3): its example is examples/plugin/repeat.c.
    plug = open(page("jobrund-plugin.3")).read() if os.path.exists(page("jobrund-plugin.3")) else ""
    m = re.search(r"^\.SH EXAMPLES\n.*?^\.EX\n(.*?)^\.EE\n", plug, re.M | re.S)
    example = open(os.path.join(SRCDIR, "examples", "plugin", "repeat.c")).read()
    want = "".join(l.expandtabs(8) + "\n" for l in example.splitlines())
    tap.ok(m is not None and unroff(m.group(1)) == want,
           "jobrund-plugin(3)'s example is examples/plugin/repeat.c "
           "(regenerate it when the file changes)")
    tap.done()


main()
