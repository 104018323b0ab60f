"""Block Kit rendering of a result, built with ``slack_sdk.models.blocks``.

Usage::

    message = to_message(result)        # {"text": ..., "blocks": [...]}
    client.chat_postMessage(channel=channel, **message)

Stays within Slack's limits (50 blocks, 3000 characters a section, 10 fields a
section, 25 buttons a row); what does not fit is cut with a note saying so.
"""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.redact import Redactor
from bot.result import Button, Result, Section

__all__ = ["to_message", "STATUS_EMOJI", "ACTION_PREFIX"]

MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_FIELDS = 10
MAX_BUTTONS = 25
MAX_FALLBACK = 3000
ACTION_PREFIX = "opsbot_"
STATUS_EMOJI = {"ok": ":large_green_circle:", "warn": ":large_orange_circle:", "fail": ":red_circle:", "error": ":x:"}
_CUT = "\n… _(cut to fit Slack; run it with `opsbot run --json` for everything)_"


def to_message(result: Result, redactor: Redactor | None = None) -> dict:
    result = (redactor or Redactor()).result(result)
    head = f"{STATUS_EMOJI[result.status]} *{_escape(result.summary)}*"
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=_fit(head, MAX_SECTION)))]
    if result.command:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=_fit(f"`/ops {result.command}`", MAX_FIELD))]))
    body: list[Block] = []
    for section in result.sections:
        body.extend(_section_blocks(section, len(body)))
    room = MAX_BLOCKS - len(blocks) - (1 if result.buttons else 0) - 1
    if len(body) > room:
        hidden = len(body) - (room - 1)
        body = body[: room - 1] + [_note(f"{hidden} more blocks not shown; run it with `opsbot run --json` for everything.")]
    blocks.extend(body)
    if result.buttons:
        blocks.append(ActionsBlock(elements=[_button(b, i) for i, b in enumerate(result.buttons[:MAX_BUTTONS])]))
    return {
        "text": _fit(f"{result.status.upper()}: {result.summary}", MAX_FALLBACK),
        "blocks": [block.to_dict() for block in blocks],
    }


def _section_blocks(section: Section, offset: int) -> list[Block]:
    blocks: list[Block] = []
    title = f"*{_escape(section.title)}*" if section.title else ""
    text = "\n".join(part for part in (title, section.text) if part)
    if section.code is not None:
        fence = "```\n" + section.code + "\n```"
        room = MAX_SECTION - len(text) - 10
        if len(fence) > room:
            fence = "```\n" + section.code[: max(room - len(_CUT) - 10, 0)] + "\n```" + _CUT
        text = "\n".join(part for part in (text, fence) if part)
    accessory = _button(section.button, offset) if section.button else None
    if text or accessory:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=_fit(text or " ", MAX_SECTION)), accessory=accessory))
    fields = list(section.fields)
    for start in range(0, len(fields), MAX_FIELDS):
        chunk = fields[start : start + MAX_FIELDS]
        blocks.append(
            SectionBlock(
                fields=[MarkdownTextObject(text=_fit(f"*{_escape(k)}*\n{v}", MAX_FIELD)) for k, v in chunk]
            )
        )
    if section.title and blocks:
        blocks.insert(0, DividerBlock())
    return blocks


def _button(button: Button, index: int) -> ButtonElement:
    confirm = None
    if button.confirm:
        confirm = ConfirmObject(title="Are you sure?", text=_fit(button.confirm, 300), confirm=button.label[:30], deny="Back")
    return ButtonElement(
        text=button.label[:75],
        action_id=f"{ACTION_PREFIX}{button.action}:{index}",
        value=button.value[:2000],
        style=button.style,
        confirm=confirm,
    )


def _note(text: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=_fit(text, MAX_FIELD))])


def _fit(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(_CUT)] + _CUT


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
