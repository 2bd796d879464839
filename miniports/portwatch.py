"""The old name of `miniports.rtmidi.watch`; `python -m miniports.portwatch` still runs it."""

import sys

from miniports.rtmidi.watch import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
