"""``python -m connbalance``: the same as the ``connbalance`` command."""

import sys

from connbalance.cli import main

sys.exit(main())
