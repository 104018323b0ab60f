"""Block Kit checked as strictly as Slack checks it: what makes the fake Slack answer ``invalid_blocks``.

Usage::

    block_errors(message["blocks"])              # [] or Slack-style lines, one per problem
    view_errors(view)                            # views.open: the view and its (up to 100) blocks
    message_refusal(body)                        # None, or Slack's answer: no_text, msg_too_long, invalid_blocks...

Each line reads like Slack's own ``errors`` entries, e.g.
``must be less than 3001 characters [json-pointer:/blocks/0/text/text]``. Two sources are combined:
slack_sdk's models (``Block.parse(b).validate_json()``, then ``to_dict()``, which validates nested
elements, text objects and confirm dialogs) and Slack's documented limits, checked here with exact
pointers because slack_sdk skips some (an actions block's buttons, unknown keys, empty text).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block, BlockElement
from slack_sdk.models.views import View

__all__ = ["block_errors", "view_errors", "message_refusal", "MESSAGE_BLOCKS", "MODAL_BLOCKS", "MAX_TEXT"]

MESSAGE_BLOCKS, MODAL_BLOCKS = 50, 100
MAX_TEXT = 40_000  # a message's top-level text (Slack truncates past it; the fake refuses: msg_too_long)
MAX_ATTACHMENTS = 100
TEXT_KEYS = {"plain_text": {"type", "text", "emoji"}, "mrkdwn": {"type", "text", "verbatim"}}
CONFIRM_KEYS = {"title", "text", "confirm", "deny", "style"}
# Documented per-type limits: (field, limit) for text objects, and element counts.
SECTION_TEXT, FIELD_TEXT, FIELDS, HEADER_TEXT = 3000, 2000, 10, 150
BUTTON_TEXT, BUTTON_VALUE, URL, ID = 75, 2000, 3000, 255
ACTIONS_ELEMENTS, CONTEXT_ELEMENTS = 25, 10
VIEW_TITLE, PRIVATE_METADATA = 24, 3000


def _at(message: str, pointer: str) -> str:
    return f"{message} [json-pointer:{pointer}]"


class _Checker:
    """Collects problems with their JSON pointers while walking one payload."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, message: str, pointer: str) -> None:
        self.errors.append(_at(message, pointer))

    def keys(self, obj: dict, allowed: set[str], pointer: str) -> None:
        for key in sorted(set(obj) - allowed):
            self.add(f"invalid additional property: {key}", pointer)

    def length(self, value: Any, limit: int, pointer: str) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            self.add("must be a string", pointer)
        elif len(value) > limit:
            self.add(f"must be less than {limit + 1} characters", pointer)

    def count(self, items: Any, limit: int, pointer: str, *, minimum: int = 1) -> list:
        if not isinstance(items, list):
            self.add("must provide an array", pointer)
            return []
        if len(items) > limit:
            self.add(f"no more than {limit} items allowed", pointer)
        elif len(items) < minimum:
            self.add(f"must provide at least {minimum} items", pointer)
        return items

    def text(self, obj: Any, pointer: str, limit: int, *, plain: bool = False) -> None:
        if not isinstance(obj, dict):
            self.add("must provide an object", pointer)
            return
        kind = obj.get("type")
        if kind not in (("plain_text",) if plain else TEXT_KEYS):
            self.add("must be plain_text" if plain else "must be one of plain_text, mrkdwn", pointer + "/type")
            return
        self.keys(obj, TEXT_KEYS[kind], pointer)
        text = obj.get("text")
        if not isinstance(text, str):
            self.add("must be a string", pointer + "/text")
        elif not text:
            self.add("must be more than 0 characters", pointer + "/text")
        else:
            self.length(text, limit, pointer + "/text")

    def confirm(self, obj: Any, pointer: str) -> None:
        if not isinstance(obj, dict):
            self.add("must provide an object", pointer)
            return
        self.keys(obj, CONFIRM_KEYS, pointer)
        for field, limit, plain in (("title", 100, True), ("text", 300, False), ("confirm", 30, True),
                                    ("deny", 30, True)):  # all four are required
            self.text(obj.get(field), f"{pointer}/{field}", limit, plain=plain)
        if obj.get("style") not in (None, "primary", "danger"):
            self.add("must be one of primary, danger", pointer + "/style")

    def element(self, obj: Any, pointer: str, action_ids: set[str]) -> None:
        if not isinstance(obj, dict):
            self.add("must provide an object", pointer)
            return
        action_id = obj.get("action_id")
        self.length(action_id, ID, pointer + "/action_id")
        if action_id is not None:
            if action_id in action_ids:
                self.add(f"action_id {action_id} is not unique in its block", pointer + "/action_id")
            action_ids.add(action_id)
        if obj.get("type") == "button":
            self.text(obj.get("text"), pointer + "/text", BUTTON_TEXT, plain=True)
            self.length(obj.get("value"), BUTTON_VALUE, pointer + "/value")
            self.length(obj.get("url"), URL, pointer + "/url")
            if obj.get("style") not in (None, "primary", "danger"):
                self.add("must be one of primary, danger", pointer + "/style")
        elif obj.get("type") == "plain_text_input":
            for field in ("max_length", "min_length"):
                if field in obj and not (isinstance(obj[field], int) and 0 <= obj[field] <= 3000):
                    self.add("must be between 0 and 3000", f"{pointer}/{field}")
        if "placeholder" in obj:
            self.text(obj["placeholder"], pointer + "/placeholder", 150, plain=True)
        if "confirm" in obj:
            self.confirm(obj["confirm"], pointer + "/confirm")
        try:
            parsed = BlockElement.parse(obj) if obj.get("type") else None
        except (TypeError, ValueError, SlackObjectFormationError) as exc:
            self.add(str(exc), pointer)
            return
        if parsed is None:
            self.add(f"unsupported type: {obj.get('type')}", pointer + "/type")
        else:
            self.keys(obj, set(parsed.attributes) | {"type"}, pointer)

    def block(self, block: Any, pointer: str, block_ids: set[str]) -> None:
        if not isinstance(block, dict):
            self.add("must provide an object", pointer)
            return
        before = len(self.errors)
        kind, block_id = block.get("type"), block.get("block_id")
        self.length(block_id, ID, pointer + "/block_id")
        if block_id is not None:
            if block_id in block_ids:
                self.add(f"block_id {block_id} is used by another block", pointer + "/block_id")
            block_ids.add(block_id)
        action_ids: set[str] = set()
        if kind == "section":
            if "text" not in block and "fields" not in block:
                self.add("must define either `text` or `fields`", pointer)
            if "text" in block:
                self.text(block["text"], pointer + "/text", SECTION_TEXT)
            if "fields" in block:
                for i, field in enumerate(self.count(block["fields"], FIELDS, pointer + "/fields")):
                    self.text(field, f"{pointer}/fields/{i}", FIELD_TEXT)
            if "accessory" in block:
                self.element(block["accessory"], pointer + "/accessory", action_ids)
        elif kind == "header":
            self.text(block.get("text"), pointer + "/text", HEADER_TEXT, plain=True)
        elif kind == "actions":
            for i, element in enumerate(self.count(block.get("elements"), ACTIONS_ELEMENTS, pointer + "/elements")):
                self.element(element, f"{pointer}/elements/{i}", action_ids)
        elif kind == "context":
            for i, element in enumerate(self.count(block.get("elements"), CONTEXT_ELEMENTS, pointer + "/elements")):
                if isinstance(element, dict) and element.get("type") in TEXT_KEYS:
                    self.text(element, f"{pointer}/elements/{i}", SECTION_TEXT)
        elif kind == "input":
            self.text(block.get("label"), pointer + "/label", 2000, plain=True)
            if "hint" in block:
                self.text(block["hint"], pointer + "/hint", 2000, plain=True)
            if "element" not in block:
                self.add("missing required field: element", pointer)
            else:
                self.element(block["element"], pointer + "/element", action_ids)
        self._sdk(block, pointer, quiet=len(self.errors) > before)

    def _sdk(self, block: dict, pointer: str, *, quiet: bool) -> None:
        """slack_sdk's own validation; its messages are added when the documented checks found nothing."""
        try:
            error, attributes = _cached_sdk_verdict(json.dumps(block, sort_keys=True))
        except (TypeError, ValueError, RecursionError):  # not JSON, or too deep to write or read back (an
            error, attributes = _sdk_verdict(block)      # in-process ack): checked as it is, without the cache
        if quiet:
            return
        if error is not None:
            self.add(error, pointer)
        else:
            self.keys(block, attributes | {"type"}, pointer)


@functools.lru_cache(maxsize=4096)
def _cached_sdk_verdict(canonical: str) -> tuple[str | None, frozenset[str]]:
    """The verdict on a block seen before: a bot sends the same blocks again and again (help, buttons), and
    slack_sdk's models take about 50 us a block, most of the fake's time in a busy run."""
    return _sdk_verdict(json.loads(canonical))


def _sdk_verdict(block: dict) -> tuple[str | None, frozenset[str]]:
    """(slack_sdk's first error line, or None; the block's known attributes)."""
    try:
        parsed = Block.parse(block)
        if parsed is None:
            raise SlackObjectFormationError(f"unsupported type: {block.get('type')}")
        parsed.validate_json()
        parsed.to_dict()  # validates nested elements, text objects and confirm dialogs too
    except (SlackObjectFormationError, TypeError, ValueError, AttributeError, KeyError) as exc:
        return str(exc).splitlines()[0] or type(exc).__name__, frozenset()
    return None, frozenset(parsed.attributes)


def block_errors(blocks: Any, pointer: str = "/blocks", limit: int = MESSAGE_BLOCKS) -> list[str]:
    """Every problem Slack would report for ``blocks`` (a message's 50, or a modal's 100)."""
    check = _Checker()
    block_ids: set[str] = set()
    for i, block in enumerate(check.count(blocks, limit, pointer, minimum=0)):
        check.block(block, f"{pointer}/{i}", block_ids)
    return check.errors


def view_errors(view: Any) -> list[str]:
    """What views.open would answer ``invalid_arguments`` for, pointed at ``/view``."""
    check = _Checker()
    if not isinstance(view, dict):
        return [_at("must provide an object", "/view")]
    if view.get("type") not in ("modal", "home"):
        check.add("must be one of modal, home", "/view/type")
    if view.get("type") == "modal":
        check.text(view.get("title"), "/view/title", VIEW_TITLE, plain=True)
        for field in ("submit", "close"):
            if field in view:
                check.text(view[field], f"/view/{field}", VIEW_TITLE, plain=True)
        blocks = view.get("blocks") if isinstance(view.get("blocks"), list) else []
        if any(isinstance(b, dict) and b.get("type") == "input" for b in blocks) and "submit" not in view:
            check.add("missing required field: submit (a view with input blocks needs it)", "/view")
    check.length(view.get("private_metadata"), PRIVATE_METADATA, "/view/private_metadata")
    check.length(view.get("callback_id"), ID, "/view/callback_id")
    check.keys(view, View.attributes - {"id", "team_id", "bot_id", "app_id", "root_view_id", "previous_view_id",
                                        "state", "hash"}, "/view")
    errors = check.errors + block_errors(view.get("blocks"), "/view/blocks", MODAL_BLOCKS)
    if not errors:
        try:
            View(**view).validate_json()
        except (SlackObjectFormationError, TypeError) as exc:
            errors.append(_at(str(exc), "/view"))
    return errors


def _decoded(value: Any) -> tuple[Any, bool]:
    """Form-encoded calls send ``blocks``/``attachments`` as JSON strings: (value, parsed fine)."""
    if not isinstance(value, str):
        return value, True
    try:
        return json.loads(value), True
    except ValueError:
        return None, False


def message_refusal(body: dict) -> dict | None:
    """Slack's answer to a message it would not post (chat.* or a response_url), or None."""
    blocks, blocks_ok = _decoded(body.get("blocks"))
    attachments, attachments_ok = _decoded(body.get("attachments"))
    if not blocks_ok:
        return {"ok": False, "error": "invalid_blocks_format"}
    if not attachments_ok or not isinstance(attachments, (list, type(None))):
        return {"ok": False, "error": "invalid_attachments"}
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        return {"ok": False, "error": "invalid_arguments",
                "response_metadata": {"messages": ["[ERROR] must be a string [json-pointer:/text]"]}}
    if len(text or "") > MAX_TEXT:
        return {"ok": False, "error": "msg_too_long"}
    attachments = attachments or []
    if len(attachments) > MAX_ATTACHMENTS:
        return {"ok": False, "error": "too_many_attachments"}
    errors = block_errors(blocks) if blocks is not None else []
    for i, attachment in enumerate(attachments):
        if isinstance(attachment, dict) and "blocks" in attachment:
            errors += block_errors(attachment["blocks"], f"/attachments/{i}/blocks")
    if errors:
        return {"ok": False, "error": "invalid_blocks", "errors": errors,
                "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}}
    has_content = bool(blocks) or bool(attachments) or bool((text or "").strip()) or bool(body.get("markdown_text"))
    if not has_content or ((blocks or attachments) and not (text or "").strip() and not body.get("markdown_text")):
        return {"ok": False, "error": "no_text"}  # Slack warns about blocks without fallback text; the fake refuses
    return None
