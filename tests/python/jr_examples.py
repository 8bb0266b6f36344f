"""jr_examples - the classic workloads for the python plugin.

Used by tests/integration/python.py (which compares what the plugin
returns with what CPython itself returns for the same calls) and by
etc/python-bench.conf (`jobrund --bench`).  Every function takes the task's
input as a str, the way the plugin passes it.
"""

import os
import threading
import time

NOT_CALLABLE = 42


class Failure(Exception):
    """An exception from outside builtins: its name is module-qualified."""


def square(x):
    """x*x: the smallest task."""
    return int(x) ** 2


def fourth_power(x):
    """x**4, through square."""
    return square(square(x))


def sum_squares(n):
    """The sum of i*i for 0 <= i < n: CPU-bound pure Python, which holds
    the GIL the whole time."""
    total = 0
    for i in range(int(n)):
        total += i * i
    return total


def nap(seconds):
    """Sleep, releasing the GIL: the I/O-bound case.  Returns the input."""
    time.sleep(float(seconds))
    return seconds


def fail(x):
    """Always raises ValueError."""
    raise ValueError("bad input: %r" % x)


def fail_custom(x):
    """Raises an exception defined here."""
    raise Failure("custom failure for %s" % x)


def spin(x):
    """Never returns on its own: only cancellation ends it."""
    n = 0
    while True:
        n += 1


def spin_flagged(path):
    """Creates PATH, to say it has started, then spins."""
    open(path, "w").close()
    spin(path)


def spin_or_echo(x):
    """Spins when x is "spin", else returns x: a cancelled task must not
    leave anything behind for the next task on the same thread."""
    if x == "spin":
        spin(x)
    return x


def swallow(x):
    """Catches everything, jobrund.Cancelled included, and returns."""
    try:
        spin(x)
    except BaseException as e:  # noqa: B036 - the point of the test
        return "swallowed %s" % type(e).__name__


def identity(x):
    """Returns the input unchanged (text round trip)."""
    return x


def nothing():
    """For a job without inputs: called with no argument."""
    return None


def shout(x):
    """Prints (to stderr, where the plugin sends stdout) and returns."""
    print("shouting %s" % x)
    return x.upper()


def where(x):
    """pid:thread of the call, to see where tasks run."""
    return "%d:%d" % (os.getpid(), threading.get_ident())


def versions(x=None):
    """The interpreter's version and prefix."""
    import sys
    return "%s %s" % (sys.version.split()[0], sys.prefix)


def extensions(x=None):
    """Imports extension modules that live in lib-dynload (not built into
    libpython): they need libpython's symbols to be global."""
    import _ctypes  # noqa: F401
    import _decimal
    import _json  # noqa: F401
    return str(_decimal.Decimal(x or "1") + _decimal.Decimal("0.1"))


def executable(x=None):
    """sys.executable: the CPython the plugin embeds."""
    import sys
    return sys.executable
