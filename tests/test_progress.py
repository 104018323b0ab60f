"""Progress is shown at most every 2 s, and the end is always shown."""

from bot.core.progress import Throttled
from bot.core.result import Result


class Sink:
    def __init__(self):
        self.shown, self.finished = [], []

    def __call__(self, result):
        self.shown.append(result.summary)

    def finish(self, result):
        self.finished.append(result.summary)


def test_at_most_one_update_every_two_seconds_and_the_end_always():
    now = {"t": 0.0}
    sink = Sink()
    progress = Throttled(sink, every=2.0, clock=lambda: now["t"])

    for t in (0.0, 0.5, 1.9, 2.0, 2.1, 3.9, 4.5):
        now["t"] = t
        progress(Result.ok(f"at {t}"))
    progress.finish(Result.ok("done"))

    assert sink.shown == ["at 0.0", "at 2.0", "at 4.5"]
    assert sink.finished == ["done"]
