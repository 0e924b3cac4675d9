"""``python -m i2x`` (and ``torchrun -m i2x``) runs the CLI."""

import sys

from i2x.cli import main

sys.exit(main())
