"""``python -m i2x.cli`` runs the CLI (as ``python -m i2x`` does)."""

import sys

from i2x.cli import main

sys.exit(main())
