"""python -m miniports.host --runtime DIR --device NAME (--miniport SPEC | --adapter SPEC)
[--options JSON] [--resources JSON]"""

import sys

from miniports.host.device import main

sys.exit(main())
