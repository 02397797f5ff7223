"""``python -m iotguard``."""

import sys

from iotguard.cli.main import main

sys.exit(main())
