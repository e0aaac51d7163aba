"""``python -m broker [options]`` is ``ssr up [options]``."""

import sys

from broker.up import main

sys.exit(main(sys.argv[1:]))
