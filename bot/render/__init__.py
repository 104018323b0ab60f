"""Renderings of a :class:`~bot.result.Result`: Block Kit for Slack, plain text for the terminal."""
