#!/usr/bin/env python3
"""Bootstrap for a fresh clone: needs nothing but Python 3.11+.

    python3 dev.py demo         # set up .venv if needed, then show opsbot working (embedded Redis + PostgreSQL)
    python3 dev.py test [ARGS]  # set up .venv if needed, then run the test suite (ARGS go to pytest)
    python3 dev.py opsbot ARGS  # run the opsbot CLI from .venv

The virtual environment lives in ./.venv and is reinstalled when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".opsbot-installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"opsbot needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("Creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing opsbot, its test tools and the embedded servers into .venv ...", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["-e", f"{ROOT}[test,demo]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    verb, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if verb not in ("demo", "test", "opsbot"):
        print(__doc__)
        return 0 if verb in ("help", "-h", "--help") else 2
    ensure_venv()
    if verb == "test":
        os.chdir(ROOT)  # pytest finds its settings and tests here; the demo writes its files where you are
        command = [str(BIN / "python"), "-m", "pytest", *rest]
    elif verb == "demo":
        command = [str(BIN / "opsbot"), "demo", *rest]
    else:
        command = [str(BIN / "opsbot"), *rest]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        # Become the command: Ctrl-C reaches it alone, it cleans up (the demo's servers and folder), and its
        # exit code is ours. No waiting parent to die with a traceback and leave it stopped in the background.
        os.execv(command[0], command)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # elsewhere: the child handles Ctrl-C, we only wait for it
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
