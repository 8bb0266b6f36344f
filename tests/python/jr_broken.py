"""jr_broken - a module whose import raises: a config error at -t time."""

raise RuntimeError("jr_broken cannot be imported")
