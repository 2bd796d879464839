"""Moved to `miniports.testing.faults`; this name stays for configurations and entry points."""
from miniports.testing.faults import *  # noqa: F403
