"""``python -m basin``: the same as the ``basin`` console script."""

import sys

from basin.cli import main

sys.exit(main())
