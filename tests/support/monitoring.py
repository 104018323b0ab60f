"""Prometheus and Alertmanager of the test's own: Debian's binaries on free loopback ports, stopped by PID.

Usage::

    with Alertmanager(token="...", webhook="http://127.0.0.1:3000/alerts") as am, \\
            Prometheus(rules=RULES, alertmanager=am.address, scrape={"canary": "127.0.0.1:9"}) as prom:
        am.api("/api/v2/alerts"), am.silences()
        prom.api("/api/v1/alerts")

Each runs from a temporary folder (its config and storage) removed on exit; clustering of
Alertmanager is off, so nothing listens beyond the one loopback port. A server that does not
come up raises (the test fails, it never skips).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import yaml

from tests.support.packages import debian_binary
from tests.support.servers import free_port, wait_for_port

__all__ = ["Alertmanager", "Prometheus"]


class _Server:
    name = "server"

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"opsbot-{self.name}-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = self.folder / "log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def api(self, path: str):
        response = httpx.get(self.url + path, timeout=5)
        response.raise_for_status()
        return response.json()

    def _start(self, command: list[str]) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        try:
            wait_for_port(self.port, up=True, timeout=30)
            self._ready()
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {self.log.read_text(errors='replace')[-2000:]}") from None

    def _ready(self) -> None:
        for _ in range(200):
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready")

    def stop(self) -> None:
        """This server only, by the PID we started."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self.process = None

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


class Alertmanager(_Server):
    name = "alertmanager"

    def __init__(self, token: str, *, webhook: str = "", group_wait: str = "1s", group_interval: str = "2s") -> None:
        super().__init__()
        self.webhook = webhook  # may be set after construction: the receiver may need this Alertmanager's url first
        self.token, self.group_wait, self.group_interval = token, group_wait, group_interval

    def __enter__(self) -> Alertmanager:
        group_wait, group_interval, token, webhook = self.group_wait, self.group_interval, self.token, self.webhook
        config = {
            "route": {"receiver": "opsbot", "group_by": ["alertname", "queue"], "group_wait": group_wait,
                      "group_interval": group_interval, "repeat_interval": "1h"},
            "receivers": [{"name": "opsbot", "webhook_configs": [{
                "url": webhook, "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials": token}}}]}],
        }
        (self.folder / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self._start([debian_binary("prometheus-alertmanager", "prometheus-alertmanager"),
                     f"--config.file={self.folder / 'alertmanager.yml'}", f"--storage.path={self.folder / 'data'}",
                     f"--web.listen-address={self.address}", "--cluster.listen-address=",
                     f"--web.external-url={self.url}"])
        return self

    def silences(self) -> list[dict]:
        return self.api("/api/v2/silences")


class Prometheus(_Server):
    name = "prometheus"

    def __init__(self, rules: str, alertmanager: str, scrape: dict[str, str]) -> None:
        super().__init__()
        (self.folder / "rules.yml").write_text(textwrap.dedent(rules))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [str(self.folder / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in scrape.items()],
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))

    def __enter__(self) -> Prometheus:
        self._start([debian_binary("prometheus", "prometheus"), f"--config.file={self.folder / 'prometheus.yml'}",
                     f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address={self.address}",
                     f"--web.external-url={self.url}", "--rules.alert.resend-delay=1s"])
        return self
