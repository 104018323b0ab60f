"""``python -m bot``: the ``opsbot`` command line."""

from bot.runtime.cli import entry

entry()
