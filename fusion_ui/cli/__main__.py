"""``python -m fusion_ui.cli`` runs the same command line as ``fusion-ui``."""

import sys

from fusion_ui.cli import main

sys.exit(main())
