"""Block Kit rendering of a result, as the dicts ``slack_sdk.models.blocks`` would make.

Usage::

    message = to_message(result)        # {"text": ..., "blocks": [...]}
    client.chat_postMessage(channel=channel, **message)

Stays within Slack's limits (50 blocks, 3000 characters a section, 10 fields a
section, 25 buttons a row); what does not fit is cut with a note saying so.
Every text is mrkdwn built by :mod:`bot.core.markup`: a plain ``str`` is a value and is
escaped (``&``, ``<``, ``>``), :class:`~bot.core.markup.Mrkdwn` is the bot's markup and
kept. That holds for the fallback ``text`` too, where Slack also expands mentions.

The blocks are built as plain dicts, key for key what slack_sdk's block models give
(their ``to_dict()`` validates each object by reflection, which cost more than the rest of
a reply); every limit those models check is kept here by construction, and the tests run
each rendered block through slack_sdk's own parsing and validation.
"""

from __future__ import annotations

from typing import Any

from bot.core.markup import Mrkdwn, bold, code, md
from bot.core.redact import Redactor
from bot.core.result import Button, Result, Section

__all__ = ["to_message", "STATUS_EMOJI", "ACTION_PREFIX"]

MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_FIELDS = 10
MAX_BUTTONS = 25
MAX_FALLBACK = 3000
MAX_VALUE = 2000  # a button's value: the command a Run button runs must fit whole
MAX_TOTAL = 12000  # characters of text in one message: Slack refuses far less than 50 full sections
ACTION_PREFIX = "opsbot_"
STATUS_EMOJI = {"ok": ":large_green_circle:", "warn": ":large_orange_circle:", "fail": ":red_circle:", "error": ":x:"}
_CUT = "\n… _(cut to fit Slack; run it with `opsbot run --json` for everything)_"


def to_message(result: Result, redactor: Redactor | None = None) -> dict:
    result = (redactor or Redactor()).result(result, data=False)  # a message shows no data
    head = md("{} *{}*", Mrkdwn(STATUS_EMOJI[result.status]), result.summary)
    head_dicts = [_section(text=_mrkdwn(_fit(head, MAX_SECTION)))]
    if result.command:
        head_dicts.append(_context(_fit(code(f"/ops {result.command}"), MAX_FIELD)))
    body_dicts: list[dict] = []
    for section in result.sections:
        body_dicts.extend(_section_blocks(section, len(body_dicts)))
    room = MAX_BLOCKS - len(head_dicts) - (1 if result.buttons else 0) - 1
    shown, spent = 0, sum(_chars(data) for data in head_dicts)
    while shown < len(body_dicts) and spent + (size := _chars(body_dicts[shown])) <= MAX_TOTAL:
        spent += size
        shown += 1
    if shown < len(body_dicts) or len(body_dicts) > room:  # cut, keeping a block for the note saying so
        shown = min(shown, room - 1)
        hidden = len(body_dicts) - shown
        note = _note(f"{hidden} more blocks not shown; run it with `opsbot run --json` for everything.")
        body_dicts = body_dicts[:shown] + [note]
    dicts = head_dicts + body_dicts
    buttons = [b for b in result.buttons[:MAX_BUTTONS] if len(b.value) <= MAX_VALUE]
    if buttons:
        dicts.append(_obj(elements=[_button(b, i) for i, b in enumerate(buttons)], type="actions"))
    if len(buttons) < len(result.buttons[:MAX_BUTTONS]):
        dicts.append(_note("A button whose command is too long for Slack was left out; run it with `opsbot run`."))
    return {"text": _fit(md("{}: {}", result.status.upper(), result.summary), MAX_FALLBACK), "blocks": dicts}


def _section_blocks(section: Section, offset: int) -> list[dict]:
    blocks: list[dict] = []
    title = bold(section.title) if section.title else ""
    text = Mrkdwn("\n").join(part for part in (title, Mrkdwn.of(section.text)) if part)
    if section.code is not None:
        room = MAX_SECTION - len(text) - 10
        body, cut = _clip(Mrkdwn.of(section.code), max(room - len(_CUT) - 8, 0))
        fence = Mrkdwn("```\n") + body + Mrkdwn("\n```" + (_CUT if cut else ""))
        text = Mrkdwn("\n").join(part for part in (text, fence) if part)
    accessory = _button(section.button, offset) if section.button and len(section.button.value) <= MAX_VALUE \
        else None  # a longer command would be cut by Slack and run as something else: no button then
    if text or accessory:
        blocks.append(_section(text=_mrkdwn(_fit(text or " ", MAX_SECTION)), accessory=accessory))
    fields = list(section.fields)
    for start in range(0, len(fields), MAX_FIELDS):
        chunk = fields[start : start + MAX_FIELDS]
        blocks.append(_section(fields=[_mrkdwn(_fit(md("{}\n{}", bold(k), v), MAX_FIELD)) for k, v in chunk]))
    if section.title and blocks:
        blocks.insert(0, {"type": "divider"})
    return blocks


def _button(button: Button, index: int) -> dict:
    confirm = None
    if button.confirm:  # in slack_sdk's ConfirmObject's order, not sorted
        parts = {"title": _plain("Are you sure?"), "text": _mrkdwn(_fit(Mrkdwn.of(button.confirm), 300)),
                 "confirm": _plain(button.label[:30]), "deny": _plain("Back")}
        confirm = {key: value for key, value in parts.items() if value is not None}
    return _obj(
        text=_plain(button.label[:75]),
        action_id=f"{ACTION_PREFIX}{button.action}:{button.form}:{index}" if button.form
        else f"{ACTION_PREFIX}{button.action}:{index}",
        value=button.value,
        style=button.style,
        confirm=confirm,
        type="button",
    )


def _obj(**attributes: Any) -> dict:
    """A Block Kit object as slack_sdk writes one: its attributes in name order, without empty ones."""
    return {key: attributes[key] for key in sorted(attributes)
            if attributes[key] is not None and (not hasattr(attributes[key], "__len__") or len(attributes[key]))}


def _section(*, text: dict | None = None, fields: list[dict] | None = None, accessory: dict | None = None) -> dict:
    return _obj(text=text, fields=fields, accessory=accessory, type="section")


def _context(text: Mrkdwn) -> dict:
    return {"elements": [_mrkdwn(text)], "type": "context"}


def _mrkdwn(text: Mrkdwn) -> dict:
    return _obj(text=text, type="mrkdwn")


def _plain(text: str) -> dict | None:
    """Plain text where slack_sdk takes a string (none for an empty one, as slack_sdk leaves it out)."""
    return {"emoji": True, "text": text, "type": "plain_text"} if text else None


def _chars(data: dict) -> int:
    """The text a block (as a dict) carries, as Slack counts it against a message's size."""
    texts = [data.get("text", {}).get("text", "")] + [f["text"] for f in data.get("fields", [])]
    texts += [e.get("text", "") for e in data.get("elements", []) if isinstance(e.get("text"), str)]
    return sum(len(t) for t in texts)


def _note(text: str) -> dict:
    return _context(_fit(Mrkdwn.of(text), MAX_FIELD))


def _fit(text: Mrkdwn, limit: int) -> Mrkdwn:
    """``text`` cut to ``limit`` characters with a note saying so."""
    clipped, cut = _clip(text, limit - len(_CUT))
    return Mrkdwn(clipped + _CUT) if cut else clipped


def _clip(text: Mrkdwn, limit: int) -> tuple[Mrkdwn, bool]:
    """At most ``limit`` characters, never cut inside a mention, a link or an escape; and whether it was cut."""
    if len(text) <= limit:
        return text, False
    cut = str(text)[: max(limit, 0)]
    for opener, closer in (("<", ">"), ("&", ";")):  # an unfinished <...> or &...; shows as garbage, or not at all
        if cut.rfind(opener) > cut.rfind(closer):
            cut = cut[: cut.rfind(opener)]
    return Mrkdwn(cut), True
