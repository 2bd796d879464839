"""`python -m ksclient.cli`: the `portcls` command."""

import sys

from ksclient.cli.main import main

sys.exit(main())
