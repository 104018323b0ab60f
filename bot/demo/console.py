"""The demo's console: type ``/ops`` commands as in Slack, in a terminal.

Usage::

    from bot.demo.console import console

    console(runtime)                # prompts "/ops "; Ctrl-D, `exit` or `quit` leaves

Each line goes through :class:`bot.runtime.terminal.TerminalSession`, the same session
as ``opsbot run``: guarded commands show their preview and ask (``yes`` or ``y``), files
commands produce are written to the current folder, and drafts are shown as well.
"""

from __future__ import annotations

from bot.core.invocation import Actor
from bot.demo.world import ONCALL, WHERE
from bot.runtime.factory import Runtime
from bot.runtime.terminal import TerminalSession

__all__ = ["console"]


def console(runtime: Runtime) -> None:
    """Type /ops commands as in Slack; previews are confirmed at the same prompt as `opsbot run` (yes or y)."""
    session = TerminalSession(runtime, Actor(ONCALL, team="TDEMO"), WHERE, output=".", interactive=True,
                              show_drafts=True)
    print("Type /ops commands as in Slack (`/ops help`, `/ops dlq status`, ...). Ctrl-D or `exit` leaves."
          " Files commands produce (audit export, postmortem drafts) are written to the current folder.")
    while True:
        try:
            line = input("\n/ops ").strip()
        except EOFError:
            print()
            return
        text = line.removeprefix("/ops").strip()
        if text in ("exit", "quit"):
            return
        print(session.render(session.run(text)))

