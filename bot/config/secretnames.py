"""Which names call their value a secret: settings, data keys, environment variables, URL parameters.

Usage::

    is_secret_key("signing_secret")     # True
    is_secret_key("INTERNAL_API_KEY")   # True: an API key
    is_secret_key("dead_key")           # False: a Redis key name, not a credential
    is_secret_param("sslpassword")      # True: a query parameter carrying a credential

"key" alone is a secret, and so are compounds naming a credential (``api_key``,
``privateKey``, ``ACCESS_KEY``, ``signing_key`` ...); a key that names a thing
(``cache_key``, ``primary_key``, ``ready_key``, ``idempotency_key``) is not.
"""

from __future__ import annotations

import re

__all__ = ["is_secret_key", "is_secret_param"]

_SECRET_WORDS = {"password", "passwords", "passwd", "pass", "passphrase", "token", "tokens", "secret", "secrets"}
# Words that make "<word> key" (or "<word>key") a credential.
_KEY_OWNERS = {
    "", "api", "app", "private", "secret", "access", "signing", "sign", "encryption", "encrypt", "decryption",
    "auth", "master", "client", "ssh", "hmac", "license", "account", "storage", "shared", "sas", "subscription",
    "integration", "service", "routing", "write", "admin", "root", "deploy", "session", "webhook", "crypto",
}
_WORDS = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# Query parameters that carry credentials without a secret word in their name.
_SECRET_PARAMS = {"sslpassword", "pwd", "sig", "signature", "x-amz-signature", "x-amz-security-token",
                  "x-goog-signature", "authorization", "key"}


def is_secret_key(key: str) -> bool:
    """True when a setting, data key or environment variable names a secret (``smtp_password``, ``api_key``)."""
    words = [word.lower() for word in _WORDS.split(key) if word]
    if any(word in _SECRET_WORDS for word in words):
        return True
    for before, word in zip(["", *words], words):
        for suffix in ("key", "keys"):
            if word == suffix and (before in _KEY_OWNERS and (before or len(words) == 1)):
                return True
            if word.endswith(suffix) and word[: -len(suffix)] in _KEY_OWNERS - {""}:
                return True
    return False


def is_secret_param(name: str) -> bool:
    """True when a URL query parameter (``?password=``, ``access_token=``, ``sslpassword=``) carries a credential."""
    lowered = name.lower()
    return is_secret_key(name) or lowered in _SECRET_PARAMS or any(
        word in lowered for word in ("password", "passwd", "secret", "token", "apikey", "api_key"))
