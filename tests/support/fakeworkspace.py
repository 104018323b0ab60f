"""What the fake Slack knows about its workspace: channels the bot can post to, and the messages it posted.

Usage::

    workspace = Workspace()
    workspace.channel("#secret", private=True, member=False)   # opsbot was never invited
    workspace.channel("#gone", exists=False)                   # deleted, or a typo in app.yaml
    workspace.resolve("#incidents")                            # ("C-INCIDENTS", None)
    workspace.resolve("#secret")                               # (None, "channel_not_found")

By default any id starting with C, G or D, or any ``#name``, is a public channel opsbot may
post to (the app has ``chat:write.public``). As in Slack, a private channel opsbot is not in
is invisible by name (``channel_not_found``) and refused by id (``not_in_channel``); a public
one it is not in is refused (``not_in_channel``) only without ``chat:write.public``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Channel", "Message", "Workspace"]


@dataclass
class Channel:
    id: str
    name: str
    private: bool = False
    member: bool = True
    exists: bool = True


@dataclass
class Message:
    channel: str
    ts: str
    body: dict
    by_bot: bool = True
    edits: list[dict] = field(default_factory=list)


def _default_id(name: str, private: bool) -> str:
    return f"{'G' if private else 'C'}-{name.upper()}"


class Workspace:
    def __init__(self, chat_write_public: bool = True):
        self.chat_write_public = chat_write_public
        self.channels: dict[str, Channel] = {}  # by id
        self.messages: dict[tuple[str, str], Message] = {}

    def channel(self, ref: str, *, name: str | None = None, private: bool = False, member: bool = True,
                exists: bool = True) -> Channel:
        """Declare a channel by ``#name`` or id; returns it (its ``id`` is what Slack answers with)."""
        if ref.startswith("#"):
            name = ref[1:]
            channel_id = _default_id(name, private)
        else:
            channel_id, name = ref, name or ref.lower()
        declared = Channel(channel_id, name, private=private, member=member, exists=exists)
        self.channels[channel_id] = declared
        return declared

    def _find(self, ref: str) -> Channel | None:
        if ref.startswith("#"):
            return next((c for c in self.channels.values() if c.name == ref[1:]), None)
        return self.channels.get(ref)

    def resolve(self, ref: object, *, ids_only: bool = False, users_too: bool = False) -> tuple[str | None, str | None]:
        """(channel id, None) when the bot may post there, else (None, Slack's error)."""
        if not isinstance(ref, str) or not ref:
            return None, "channel_not_found"
        if ids_only and ref.startswith("#"):  # chat.update and file shares take an id, never a name
            return None, "channel_not_found"
        declared = self._find(ref)
        if declared is None:
            if ref.startswith("#") and len(ref) > 1:
                return _default_id(ref[1:], False), None
            if ref[0] in "CGD" or (users_too and ref[0] in "UW"):
                return ref, None
            return None, "channel_not_found"
        if not declared.exists:
            return None, "channel_not_found"
        if not declared.member:
            if declared.private:
                return None, "channel_not_found" if ref.startswith("#") else "not_in_channel"
            if not self.chat_write_public:
                return None, "not_in_channel"
        return declared.id, None

    def posted(self, channel: str, ts: str, body: dict) -> None:
        self.messages[(channel, ts)] = Message(channel, ts, body)

    def message(self, channel: str, ts: str, body: dict | None = None, *, by_bot: bool = False) -> Message:
        """Declare a message that is there already (by default someone else's: the bot cannot edit it)."""
        channel_id = self.resolve(channel)[0] or channel
        message = self.messages[(channel_id, ts)] = Message(channel_id, ts, body or {"text": ""}, by_bot=by_bot)
        return message

    def update(self, channel: str, ts: str, body: dict) -> str | None:
        """Edit a message in place; Slack's error when there is none the bot may edit."""
        message = self.messages.get((channel, ts))
        if message is None:
            return "message_not_found"
        if not message.by_bot:
            return "cant_update_message"
        message.edits.append(body)
        return None
