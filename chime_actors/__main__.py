"""``python -m chime_actors`` is ``chime``."""

import sys

from chime_actors.cli.main import main

sys.exit(main())
