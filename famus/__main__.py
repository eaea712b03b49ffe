import sys

from famus.cli import main

sys.exit(main())
