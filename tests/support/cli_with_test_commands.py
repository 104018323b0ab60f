"""``python -m tests.support.cli_with_test_commands``: the real CLI with the tests' guarded commands added."""

import sys

import commands
from bot.core.group import Group
from bot.runtime.cli import main
from tests.support import commands as test_commands

commands.GROUPS.append(Group("test", commands=test_commands.COMMANDS))  # installed like any other group

if __name__ == "__main__":
    sys.exit(main())
