"""Alert webhooks read into one model: Alertmanager's (version 4) and Grafana alerting's (unified and legacy).

Usage::

    problem = malformed(body)                  # None, or why the intake answers 400
    group = read_group(body)                   # AlertGroup: key, status, alerts, common labels, links
    group.gid, group.name, group.firing

Alertmanager sends ``{version: "4", groupKey, status, receiver, groupLabels, commonLabels,
commonAnnotations, externalURL, alerts: [{status, labels, annotations, startsAt, endsAt,
generatorURL, fingerprint}]}``; Grafana's unified alerting sends the same shape plus
``orgId``, ``title``, ``state``, ``message`` and per alert ``silenceURL``, ``dashboardURL``,
``panelURL``, ``values``; Grafana's legacy alerting sends ``{ruleId, ruleName, ruleUrl, state,
title, message, tags, evalMatches}``. Every label and annotation is kept as text, cut to a
bounded length: the values come from outside and are shown in Slack escaped, never trusted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Alert", "AlertGroup", "MAX_VALUE", "malformed", "read_group"]

MAX_VALUE = 1000  # characters kept of one label or annotation value
MAX_LABELS = 64  # labels or annotations kept per alert
MAX_ALERTS = 5000  # alerts kept per notification


@dataclass(frozen=True)
class Alert:
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    starts_at: str = ""
    ends_at: str = ""
    generator_url: str = ""
    silence_url: str = ""

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "") or "unnamed alert"


@dataclass(frozen=True)
class AlertGroup:
    key: str
    status: str  # firing | resolved
    alerts: tuple[Alert, ...]
    common_labels: dict[str, str]
    common_annotations: dict[str, str]
    external_url: str = ""
    source: str = "alertmanager"  # alertmanager | grafana
    truncated: int = 0  # alerts the sender left out (Alertmanager's max_alerts)

    @property
    def gid(self) -> str:
        """A short, stable id of the group (its key hashed): names it in Redis and on buttons."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:16]

    @property
    def firing(self) -> list[Alert]:
        return [alert for alert in self.alerts if alert.status != "resolved"]

    @property
    def name(self) -> str:
        return self.common_labels.get("alertname") or (self.alerts[0].name if self.alerts else "unnamed alert")

    @property
    def labels(self) -> dict[str, str]:
        """The labels every alert of the group shares (one alert: all of its labels)."""
        return self.common_labels or (dict(self.alerts[0].labels) if len(self.alerts) == 1 else {})

    @property
    def summary(self) -> str:
        notes = self.common_annotations or (self.alerts[0].annotations if self.alerts else {})
        return notes.get("summary") or notes.get("description") or notes.get("message") or ""


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text[:MAX_VALUE]


def _mapping(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {_text(key)[:200]: _text(val) for key, val in list(value.items())[:MAX_LABELS]}


def malformed(body: dict) -> str | None:
    """Why ``body`` is neither an Alertmanager nor a Grafana webhook; None when it is one."""
    if "alerts" in body:
        if not isinstance(body["alerts"], list) or not all(isinstance(a, dict) for a in body["alerts"]):
            return "`alerts` must be a list of objects"
        return None
    if "ruleName" in body or "ruleId" in body:
        return None
    return "not an Alertmanager or Grafana alerting webhook (no `alerts`, no `ruleName`)"


def read_group(body: dict) -> AlertGroup:
    if "alerts" not in body:
        return _legacy_grafana(body)
    source = "grafana" if "orgId" in body or "state" in body else "alertmanager"
    alerts = tuple(_alert(raw) for raw in body["alerts"][:MAX_ALERTS])
    common = _mapping(body.get("commonLabels"))
    status = "resolved" if _text(body.get("status")) == "resolved" else "firing"
    key = _text(body.get("groupKey")) or _fallback_key(common, alerts)
    return AlertGroup(key=key, status=status, alerts=alerts, common_labels=common,
                      common_annotations=_mapping(body.get("commonAnnotations")),
                      external_url=_text(body.get("externalURL")), source=source,
                      truncated=int(body.get("truncatedAlerts") or 0) if str(body.get("truncatedAlerts") or "0")
                      .isdigit() else 0)


def _alert(raw: dict) -> Alert:
    return Alert(status="resolved" if raw.get("status") == "resolved" else "firing",
                 labels=_mapping(raw.get("labels")), annotations=_mapping(raw.get("annotations")),
                 fingerprint=_text(raw.get("fingerprint"))[:64], starts_at=_text(raw.get("startsAt"))[:40],
                 ends_at=_text(raw.get("endsAt"))[:40], generator_url=_text(raw.get("generatorURL")),
                 silence_url=_text(raw.get("silenceURL")))


def _fallback_key(common: dict[str, str], alerts: tuple[Alert, ...]) -> str:
    labels = common or (alerts[0].labels if alerts else {})
    return "{}:{" + ",".join(f"{k}={v!r}" for k, v in sorted(labels.items())) + "}"


def _legacy_grafana(body: dict) -> AlertGroup:
    """Grafana's legacy alerting: one rule, ``state`` alerting | ok | no_data | paused | pending."""
    name = _text(body.get("ruleName")) or "unnamed alert"
    labels = {"alertname": name, **_mapping(body.get("tags"))}
    status = "resolved" if _text(body.get("state")) == "ok" else "firing"
    notes = {"summary": _text(body.get("title")), "description": _text(body.get("message"))}
    alert = Alert(status=status, labels=labels, annotations=notes, generator_url=_text(body.get("ruleUrl")))
    key = f"grafana-rule:{_text(body.get('ruleId')) or name}"
    return AlertGroup(key=key, status=status, alerts=(alert,), common_labels=labels, common_annotations=notes,
                      source="grafana")
