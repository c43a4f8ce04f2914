"""``python -m connbalance.agent``: the same as ``connbalance agent``."""

import sys

from connbalance.agent.main import run

sys.exit(run(sys.argv[1:]))
