"""`python -m prunewise` runs the CLI."""

import sys

from prunewise.cli import main

sys.exit(main())
