"""``python -m bot``: the ``opsbot`` command line."""

import sys

from bot.runtime.cli import main

sys.exit(main())
