"""python -m miniports.host --runtime DIR --device NAME --miniport SPEC [--options JSON]"""

import sys

from miniports.host.device import main

sys.exit(main())
