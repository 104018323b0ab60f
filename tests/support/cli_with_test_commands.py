"""``python -m tests.support.cli_with_test_commands``: the real CLI with the tests' guarded commands added."""

import sys

import commands
from bot.runtime.cli import main
from tests.support import commands as test_commands

_build = commands.build_registry
commands.build_registry = lambda: _build().add(*test_commands.COMMANDS)

if __name__ == "__main__":
    sys.exit(main())
