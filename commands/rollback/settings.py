"""``services.<name>.deploy`` and ``services.<name>.rollback``: where a service's deploys are, how a rollback is judged."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from bot.config.types import ConfigModel as _Model
from bot.config.types import Duration

__all__ = ["DeploySettings", "RollbackSettings"]


class DeploySettings(_Model):
    """Where ``rollback`` lists and rolls back a service's deploys: a generic HTTP API or Render."""

    provider: Literal["http", "render"]
    url: str | None = None  # http: the deploy API's base URL; render: https://api.render.com/v1
    service_id: str | None = None  # render: srv-...
    token: SecretStr | None = None
    timeout: Duration = 10.0
    retries: int = Field(3, ge=0, le=10)
    compare_url: str | None = None  # e.g. https://github.com/acme/api/compare/{from}...{to}

    @model_validator(mode="after")
    def _complete(self) -> "DeploySettings":
        if self.provider == "http" and not self.url:
            raise ValueError("url: the http deploy provider needs the deploy API's base url")
        if self.provider == "render" and not self.service_id:
            raise ValueError("service_id: the render provider needs the service id (srv-...)")
        return self


class RollbackSettings(_Model):
    """How ``rollback`` judges a rollback: the schema it must respect, and the verification after it."""

    database: str | None = None  # whose migrations constrain which code may run (see `drift`)
    deploy_timeout: Duration = 600.0
    verify_window: Duration = 300.0
    verify_interval: Duration = 15.0
    error_rate: float = Field(0.10, ge=0)  # roll back when the error rate is above 10%
    latency_baseline: Duration | None = None  # p95 in normal operation; > 1.5x is "performance degraded"
    runbook: str = "safe-rollback"
