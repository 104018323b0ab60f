"""``opsbot demo``: a sandbox with real Redis and PostgreSQL and a broken world to fix.

Usage::

    from bot.demo import main as demo    # as bot.runtime.cli does for `opsbot demo [--tour]`
    demo.main(interactive=False)         # the scripted tour; returns the exit code

Modules: ``main`` (the entry point), ``sandbox`` (the embedded servers), ``services``
(the fake HTTP services), ``world`` (the seed data), ``tour`` (the scripted tour) and
``console`` (the interactive console, on the shared terminal session).
"""
