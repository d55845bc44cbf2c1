"""``python -m chime_actors.devservices``: what ``bin/services`` runs."""

import sys

from chime_actors.devservices.cli import main

sys.exit(main())
