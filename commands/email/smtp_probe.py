"""Probe an SMTP provider the way the sender talks to it, without sending mail.

Usage::

    report = probe(settings.email.smtp)
    report.ok, report.failed_step, [(s.name, s.ms, s.detail) for s in report.steps]

Steps: connect (and greeting), EHLO, STARTTLS (when configured or offered), EHLO again,
AUTH (when credentials are configured), QUIT. Each is timed; the first failure ends the
probe and is named.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from commands.email.settings import SmtpSettings

if TYPE_CHECKING:
    import smtplib

__all__ = ["probe", "ProbeReport", "ProbeStep"]


@dataclass(frozen=True)
class ProbeStep:
    name: str
    ok: bool
    ms: float
    detail: str = ""


@dataclass
class ProbeReport:
    host: str
    port: int
    steps: list[ProbeStep] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def failed_step(self) -> ProbeStep | None:
        return next((step for step in self.steps if not step.ok), None)


def _describe(exc: BaseException) -> str:
    import smtplib

    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{exc.smtp_code} {message}"
    if isinstance(exc, (socket.timeout, TimeoutError)) or (
        isinstance(exc, smtplib.SMTPServerDisconnected) and "timed out" in str(exc)
    ):
        return "timed out"
    return f"{type(exc).__name__}: {exc}".strip()


def probe(settings: SmtpSettings) -> ProbeReport:
    import smtplib
    import ssl

    if not settings.host:
        raise ValueError("no SMTP host is configured (email.smtp.host, $SMTP_HOST)")
    report = ProbeReport(settings.host, settings.port)
    context = ssl.create_default_context(cafile=settings.ca_file)
    client: smtplib.SMTP | None = None

    def step(name: str, action) -> bool:
        started = time.perf_counter()
        try:
            detail = action() or ""
        except BaseException as exc:  # noqa: BLE001 - every failure is a finding
            report.steps.append(ProbeStep(name, False, (time.perf_counter() - started) * 1000, _describe(exc)))
            return False
        report.steps.append(ProbeStep(name, True, (time.perf_counter() - started) * 1000, detail))
        return True

    def connect() -> str:
        nonlocal client
        if settings.security == "ssl":
            client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        return f"connected to {settings.host}:{settings.port}"

    def ehlo() -> str:
        code, message = client.ehlo()
        if code != 250:
            raise smtplib.SMTPResponseException(code, message)
        return message.decode(errors="replace").splitlines()[0]

    def starttls() -> str:
        code, message = client.starttls(context=context)
        return f"{code} {message.decode(errors='replace')}"

    def login() -> str:
        # One attempt with one mechanism, so the provider's own answer (535 ...) is what we report.
        client.user = settings.username
        client.password = settings.password.get_secret_value() if settings.password else ""
        offered = (client.esmtp_features.get("auth") or "").upper().split()
        mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None:
            raise smtplib.SMTPNotSupportedError(f"the server offers no PLAIN or LOGIN auth ({' '.join(offered)})")
        handler = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, message = client.auth(mechanism, handler)
        return f"authenticated as {settings.username} ({mechanism}, {code})"

    try:
        if not step("connect", connect) or not step("ehlo", ehlo):
            return report
        offered = client.has_extn("starttls")
        if settings.security == "starttls":
            if not offered:
                report.steps.append(ProbeStep("starttls", False, 0.0, "the server does not offer STARTTLS"))
                return report
            if not step("starttls", starttls) or not step("ehlo after starttls", ehlo):
                return report
        if settings.username:
            step("auth", login)
        return report
    finally:
        if client is not None:
            try:
                client.quit()
            except Exception:
                client.close()
