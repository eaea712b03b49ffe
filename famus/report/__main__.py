"""``python -m famus.report RUN_DIR ... --out DIR`` (the same as ``famus report``)."""

import sys

from famus.report.cli import main

sys.exit(main())
