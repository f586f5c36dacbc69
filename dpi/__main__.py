"""`python -m dpi` is `redweb`."""
import sys

from dpi.cli import main

sys.exit(main())
