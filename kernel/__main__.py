"""Run a kernel in the foreground: python -m kernel [--runtime DIR] [config.toml]."""

from __future__ import annotations

import sys

from kernel.main import main

sys.exit(main())
