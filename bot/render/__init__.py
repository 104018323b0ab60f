"""Renderings of a :class:`~bot.core.result.Result`: Block Kit for Slack, plain text for the terminal."""
