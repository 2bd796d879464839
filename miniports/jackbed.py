"""Moved to `miniports.testing.jack`; this name stays for code that imports it from here."""
from miniports.testing.jack import *  # noqa: F403
