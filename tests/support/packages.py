"""Real software the tests start, installed from Debian's packages when it is missing.

Usage::

    pgbouncer = debian_binary("pgbouncer", "pgbouncer")     # path to the binary, installing the package if needed

``.ci/run`` installs every package the tests name up front; this is the same step for a
developer's machine, so a test never skips for want of a server. Installing needs root
(as on CI); anything else raises with the command to run, and the test fails. Parallel
installs wait for each other on one lock file, and ``apt-get update`` runs at most once
per machine boot (it is skipped when the package lists are already there).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

__all__ = ["debian_binary"]

LOCK = "/tmp/opsbot-apt.lock"
SEARCH = ("/usr/sbin", "/usr/bin", "/usr/lib/postgresql/*/bin")


def _find(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for folder in SEARCH:
        for candidate in sorted(glob.glob(os.path.join(folder, binary)), reverse=True):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def debian_binary(package: str, binary: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` first if it is not on the machine."""
    found = _find(binary)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(f"{binary} is missing: install it with `sudo apt-get install {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    script = (
        "set -e; ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q; "
        f"apt-get install -y -q --no-install-recommends {package} || "
        f"(apt-get update -q && apt-get install -y -q --no-install-recommends {package})"
    )
    done = subprocess.run(["flock", LOCK, "sh", "-c", script], env=env, capture_output=True, text=True)
    found = _find(binary)
    if not found:
        raise RuntimeError(f"installing {package} did not provide {binary}: {done.stderr.strip()[-2000:]}")
    return found
