"""A command in a terminal: its preview confirmed at a prompt, its files written to disk. Shared by the CLI and the demo.

Usage::

    session = TerminalSession(runtime, actor, Where("cli"), output=".")
    outcome = session.run("dlq requeue --limit 10", assume_yes=False)    # asks "Type yes ..." in a terminal
    print(session.render(outcome))

A guarded command's preview is confirmed by typing ``yes`` (or ``y``); anything
else cancels it. Without a terminal and without ``--yes``, the preview is shown
and nothing changes. Files a command produces (``audit export``, a postmortem
draft) are written under ``output`` and the reply says where.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from bot.core.invocation import Actor, Where
from bot.core.progress import TerminalProgress, Throttled
from bot.core.redact import Redactor
from bot.core.result import Result, to_json
from bot.engine.outcome import Outcome
from bot.render.text import to_text

__all__ = ["TerminalSession", "YES", "render"]

YES = {"y", "yes"}
NOT_CONFIRMED = "Not confirmed: nothing was changed. Re-run with --yes to execute this plan."


@dataclass
class TerminalSession:
    runtime: object  # bot.runtime.factory.Runtime
    actor: Actor
    where: Where
    output: str = "."
    interactive: bool | None = None  # None: ask only when stdin and stdout are a terminal
    show_drafts: bool = False  # print small text files (a postmortem draft) as well as writing them

    def progress(self) -> Throttled:
        return Throttled(TerminalProgress(self.runtime.redactor), every=2.0)

    def run(self, text: str, *, assume_yes: bool = False, quiet: bool = False) -> Outcome:
        """``text`` as the actor; a preview is confirmed here (``assume_yes``, or at the prompt)."""
        engine = self.runtime.engine
        outcome = engine.handle(text, self.actor, self.where, self.progress())
        if outcome.kind == "preview":
            outcome = self._confirm(outcome, assume_yes, quiet)
        return self.save(outcome)

    def _confirm(self, preview: Outcome, assume_yes: bool, quiet: bool) -> Outcome:
        engine, pending = self.runtime.engine, preview.pending
        assert pending is not None
        if assume_yes:
            return engine.confirm(pending.id, self.actor, self.where, self.progress())
        interactive = sys.stdin.isatty() and sys.stdout.isatty() if self.interactive is None else self.interactive
        if interactive and not quiet:
            print(to_text(preview.result, self.runtime.redactor))
            answer = input("\nType 'yes' to confirm, anything else cancels: ").strip().lower()
            if answer in YES:
                return engine.confirm(pending.id, self.actor, self.where, self.progress())
            return engine.cancel(pending.id, self.actor, self.where)
        result = preview.result.with_(data={**preview.result.data, "note": NOT_CONFIRMED}, buttons=[])
        if not quiet:
            print(NOT_CONFIRMED, file=sys.stderr)
        return Outcome("preview", result, pending, preview.command)

    def save(self, outcome: Outcome) -> Outcome:
        """Write the result's files under ``output`` (a folder, or the file name when there is one file)."""
        files = outcome.result.attachments
        if not files:
            return outcome
        written, shown = [], []
        try:
            for attachment in files:
                target = Path(self.output)
                if target.is_dir() or len(files) > 1:
                    target = target / attachment.filename
                if attachment.path:
                    shutil.move(attachment.path, target)
                else:
                    target.write_bytes(attachment.content or b"")
                written.append(str(target))
                print(f"wrote {target}", file=sys.stderr)
                if self.show_drafts and attachment.content is not None and len(attachment.content) < 65536:
                    shown.append(attachment.content.decode("utf-8", "replace"))
        finally:
            for attachment in files:
                attachment.discard()
        for draft in shown:
            print(draft)
        result = outcome.result.with_(data={**outcome.result.data, "written": written}, attachments=[])
        return replace(outcome, result=result)

    def render(self, outcome: Outcome, as_json: bool = False) -> str:
        return render(outcome.result, self.runtime.redactor, as_json)


def render(result: Result, redactor: Redactor, as_json: bool = False) -> str:
    """A result as the terminal shows it: text, or JSON; secrets redacted either way."""
    return to_json(redactor.result(result)) if as_json else to_text(result, redactor)
