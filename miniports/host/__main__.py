"""python -m miniports.host --runtime DIR --device NAME --miniport SPEC [--options JSON]"""

import sys

from miniports.host.loop import main

sys.exit(main())
