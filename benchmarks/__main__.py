"""``python -m benchmarks [--quick] [--only NAME] [--json FILE]``."""

import sys

from benchmarks.runner import main

sys.exit(main())
