"""Deploy providers: list a service's deploys, roll back to one, follow the new deploy.

Usage::

    provider = provider_for(settings.services["api"].deploy)
    deploys = provider.deploys()                 # newest first
    started = provider.rollback(deploys[1].id, key="opsbot-1a2b")
    provider.deploy(started.id).state            # "live", "in_progress", "failed"

Two implementations:

* ``http`` — a small contract any deploy system can expose (documented in the README):
  ``GET {url}/deploys?limit=N`` → ``[{"id", "version", "status", "created_at", "finished_at", "message"}]``
  newest first; ``GET {url}/deploys/{id}`` → one; ``POST {url}/rollback`` with
  ``{"deploy_id"}`` and an ``Idempotency-Key`` → the deploy it started.
* ``render`` — Render's API: ``GET /services/{id}/deploys``,
  ``GET /services/{id}/deploys/{deployId}``, ``POST /services/{id}/rollback`` with ``{"deployId"}``.

Every call has the configured timeout and bounded retries on 5xx and timeouts; the
token never appears in an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from commands.rollback.settings import DeploySettings
from bot.core.httpretry import request
from bot.core.invocation import CommandError

__all__ = ["Deploy", "DeployProvider", "HttpDeploys", "RenderDeploys", "provider_for"]

State = Literal["live", "succeeded", "in_progress", "failed"]


@dataclass(frozen=True)
class Deploy:
    id: str
    version: str  # a commit sha or an image tag
    state: State  # live: serving now; succeeded: served before; in_progress; failed
    created_at: datetime | None
    finished_at: datetime | None = None
    message: str = ""

    @property
    def successful(self) -> bool:
        return self.state in ("live", "succeeded")

    @property
    def short(self) -> str:
        return f"{self.id} ({self.version[:12]})" if self.version else self.id

    def as_dict(self) -> dict:
        return {"id": self.id, "version": self.version, "state": self.state, "message": self.message,
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


class DeployProvider(Protocol):
    def deploys(self, limit: int = 20) -> list[Deploy]: ...

    def deploy(self, deploy_id: str) -> Deploy: ...

    def rollback(self, deploy_id: str, *, key: str) -> Deploy: ...

    def close(self) -> None: ...


def _time(value: object) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


class _Client:
    def __init__(self, settings: DeploySettings, base_url: str):
        import httpx

        headers = {"Accept": "application/json"}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.settings = settings
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=settings.timeout)

    def call(self, method: str, path: str, **kw) -> object:
        response = request(self.http, method, path, retries=self.settings.retries, **kw)
        if response.status_code >= 400:
            detail = response.text[:300].strip()
            raise CommandError(f"deploy provider answered HTTP {response.status_code} to {method} {path}"
                               + (f": {detail}" if detail else ""))
        try:
            return response.json()
        except ValueError:
            raise CommandError(f"deploy provider did not answer JSON to {method} {path}") from None

    def close(self) -> None:
        self.http.close()


class HttpDeploys(_Client):
    _STATES: dict[str, State] = {"live": "live", "succeeded": "succeeded", "success": "succeeded",
                                 "in_progress": "in_progress", "pending": "in_progress", "queued": "in_progress",
                                 "failed": "failed", "canceled": "failed"}

    def __init__(self, settings: DeploySettings):
        super().__init__(settings, settings.url or "")

    def _deploy(self, item: dict) -> Deploy:
        return Deploy(str(item["id"]), str(item.get("version") or ""),
                      self._STATES.get(str(item.get("status", "")).lower(), "failed"),
                      _time(item.get("created_at")), _time(item.get("finished_at")), str(item.get("message") or ""))

    def deploys(self, limit: int = 20) -> list[Deploy]:
        body = self.call("GET", "/deploys", params={"limit": limit})
        if not isinstance(body, list):
            raise CommandError("deploy provider: GET /deploys did not answer a list")
        return [self._deploy(item) for item in body]

    def deploy(self, deploy_id: str) -> Deploy:
        return self._deploy(self.call("GET", f"/deploys/{deploy_id}"))

    def rollback(self, deploy_id: str, *, key: str) -> Deploy:
        return self._deploy(self.call("POST", "/rollback", json={"deploy_id": deploy_id},
                                      headers={"Idempotency-Key": key}))


class RenderDeploys(_Client):
    _STATES: dict[str, State] = {"live": "live", "deactivated": "succeeded", "created": "in_progress",
                                 "queued": "in_progress", "build_in_progress": "in_progress",
                                 "update_in_progress": "in_progress", "pre_deploy_in_progress": "in_progress"}

    def __init__(self, settings: DeploySettings):
        super().__init__(settings, settings.url or "https://api.render.com/v1")
        self.service = settings.service_id

    def _deploy(self, item: dict) -> Deploy:
        commit = item.get("commit") or {}
        image = item.get("image") or {}
        message = str(commit.get("message") or "").strip()
        return Deploy(str(item["id"]), str(commit.get("id") or image.get("sha") or image.get("ref") or ""),
                      self._STATES.get(str(item.get("status", "")), "failed"), _time(item.get("createdAt")),
                      _time(item.get("finishedAt")), message.splitlines()[0] if message else "")

    def deploys(self, limit: int = 20) -> list[Deploy]:
        body = self.call("GET", f"/services/{self.service}/deploys", params={"limit": limit})
        if not isinstance(body, list):
            raise CommandError("render: listing deploys did not answer a list")
        return [self._deploy(entry["deploy"]) for entry in body]

    def deploy(self, deploy_id: str) -> Deploy:
        return self._deploy(self.call("GET", f"/services/{self.service}/deploys/{deploy_id}"))

    def rollback(self, deploy_id: str, *, key: str) -> Deploy:
        # Render has no idempotency key; the bot's guard claims the confirmation exactly once.
        return self._deploy(self.call("POST", f"/services/{self.service}/rollback", json={"deployId": deploy_id}))


def provider_for(settings: DeploySettings) -> DeployProvider:
    return HttpDeploys(settings) if settings.provider == "http" else RenderDeploys(settings)
