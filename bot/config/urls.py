"""Connection URLs in app.yaml: where substituted values land, literal credentials, validation, secrets.

Usage::

    template = parse("redis://:${REDIS_PASSWORD}@cache:6379/0")
    literal_credentials(template)                  # [] (the password comes from the environment)
    render(template, env, encoders=encoders)       # the password percent-encoded: 'redis://:p%40ss@cache:6379/0'
    redis_url_problem("127.0.0.1:6379/0")          # 'not a Redis URL: it has no scheme; write redis://...'
    credentials("postgresql://app:s3cret@db/app")  # ['s3cret']

No message here ever contains the URL or a part of it: a URL may hold a password.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote, unquote, urlsplit

from bot.config.envsubst import Template, literal_text
from bot.config.secretnames import is_secret_param

__all__ = ["conninfo_credentials", "conninfo_encoders", "credentials", "encoders", "literal_conninfo_password",
           "literal_credentials", "postgres_url_problem", "redis_url_problem"]

_REF_BASE = 0xF0000  # references stand in as private-use characters while a template's layout is read
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CONNINFO_PAIR = re.compile(r"([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
_CONNINFO_SECRETS = ("password", "sslpassword")

REDIS_FORM = ("write redis://[[user]:password@]host[:port][/db] (rediss:// for TLS, "
              "unix:///path/to/redis.sock?db=N for a socket)")
POSTGRES_FORM = ("write postgresql://[user[:password]@]host[:port]/dbname[?param=value] "
                 "or a key=value connection string (host=db port=5432 dbname=app)")


def _layout(template: Template) -> dict[str, object] | None:
    """Split a URL template at its literal delimiters; None when it is not a URL.

    A URL is a template starting with a literal scheme (``redis://``) or with a reference
    (``${API_URL}/health?token=${TOKEN}``), whose query is then read from the literal text.
    """
    if len(template) >= 0x10000 or any(isinstance(p, str) and re.search("[\U000f0000-\U000fffff]", p)
                                       for p in template):
        return None
    text = "".join(p if isinstance(p, str) else chr(_REF_BASE + i) for i, p in enumerate(template))
    match = _SCHEME.match(text)
    if match:
        rest = text[match.end():]
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        authority, tail = rest[:end], rest[end:]
    elif template and not isinstance(template[0], str):  # ${API_URL}/health?token=${TOKEN}: a base URL, then more
        authority, tail = "", text
    else:
        return None
    at = authority.rfind("@")
    userinfo = authority[:at] if at >= 0 else ""
    user, colon, password = userinfo.partition(":")
    query = tail.partition("#")[0].partition("?")[2]
    params = [pair.partition("=") for pair in query.split("&")] if query else []
    return {"user": user, "password_sep": colon, "password": password, "params": params}


def _refs(text: str) -> list[int]:
    return [ord(c) - _REF_BASE for c in text if ord(c) >= _REF_BASE]


def _literal(text: str, template: Template) -> str:
    """The literal characters of a layout piece, defaults of its references included."""
    return "".join(c if ord(c) < _REF_BASE else literal_text(template[ord(c) - _REF_BASE].default or ())
                   for c in text)


def encoders(template: Template) -> dict[int, Callable[[str], str]]:
    """Percent-encoders for references landing in a URL's user, password or a query value."""
    layout = _layout(template)
    if layout is None:
        return {}
    encode: dict[int, Callable[[str], str]] = {}
    for index in _refs(layout["password"]):
        encode[index] = _quote_all
    for index in _refs(layout["user"]):  # without a literal ':' the value may be "user:password"
        encode[index] = _quote_all if layout["password_sep"] else _quote_userinfo
    for _name, _sep, value in layout["params"]:
        for index in _refs(value):
            encode[index] = _quote_all
    return encode


def _quote_all(value: str) -> str:
    return quote(value, safe="")


def _quote_userinfo(value: str) -> str:
    return quote(value, safe=":")


def conninfo_encoders(template: Template) -> dict[int, Callable[[str], str]]:
    """Quoting for a reference that is a whole value of a key=value connection string (``password=${PGPASS}``)."""
    if _layout(template) is not None:
        return {}
    text = "".join(p if isinstance(p, str) else chr(_REF_BASE + i) for i, p in enumerate(template))
    encode: dict[int, Callable[[str], str]] = {}
    for _name, value in _CONNINFO_PAIR.findall(text):
        if value.startswith("'"):
            for index in _refs(value):
                encode[index] = _escape_conninfo
        elif len(value) == 1 and _refs(value):
            encode[_refs(value)[0]] = _quote_conninfo
    return encode


def _escape_conninfo(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _quote_conninfo(value: str) -> str:
    return f"'{_escape_conninfo(value)}'" if not value or re.search(r"[\s'\\]", value) else value


def literal_credentials(template: Template) -> list[str]:
    """Problems: a password or a secret query parameter written literally in a URL template."""
    layout = _layout(template)
    if layout is None:
        return []
    problems = []
    if _literal(layout["password"], template):
        problems.append("credentials inside a URL must come from the environment (${VARIABLE})")
    for name, sep, value in layout["params"]:
        if sep and not _refs(name) and is_secret_param(unquote(name)) and _literal(value, template):
            problems.append(f"the secret query parameter {unquote(name)!r} must come from the environment "
                            "(${VARIABLE}), like credentials inside a URL")
    return problems


def literal_conninfo_password(template: Template) -> list[str]:
    """Problems: ``password=...`` written literally in a key=value PostgreSQL connection string."""
    if _layout(template) is not None:
        return []
    text = "".join(p if isinstance(p, str) else chr(_REF_BASE + i) for i, p in enumerate(template))
    return [f"{name} in a connection string must come from the environment (${{VARIABLE}})"
            for name, value in _CONNINFO_PAIR.findall(text)
            if name.lower() in _CONNINFO_SECRETS and _literal(value.strip("'"), template)]


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL redis-py can use, or None."""
    if "://" not in url:
        return f"not a Redis URL: it has no scheme; {REDIS_FORM}"
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return f"not a Redis URL: the scheme must be redis://, rediss:// or unix://; {REDIS_FORM}"
    problem = _url_parts_problem(url)
    if problem:
        return f"not a valid Redis URL: {problem}; {REDIS_FORM}"
    parts = urlsplit(url)
    if parts.scheme == "unix" and not parts.path:
        return f"not a valid Redis URL: unix:// needs the socket's path; {REDIS_FORM}"
    if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return f"not a valid Redis URL: the path must be the database number; {REDIS_FORM}"
    if not parts.query:  # all redis-py could refuse is a query parameter's value: no need to load it
        return None
    from redis.connection import parse_url

    try:
        parse_url(url)
    except Exception:  # noqa: BLE001 - its message may quote the URL
        return f"not a valid Redis URL: a query parameter has a bad value; {REDIS_FORM}"
    return None


def postgres_url_problem(url: str) -> str | None:
    """Why ``url`` is not a PostgreSQL URL or key=value connection string libpq accepts, or None."""
    is_url = "://" in url and not re.match(r"^\s*[A-Za-z_]+\s*=", url)
    if is_url and not url.startswith(("postgresql://", "postgres://")):
        return f"not a PostgreSQL URL: the scheme must be postgresql:// or postgres://; {POSTGRES_FORM}"
    if not is_url and "=" not in url:
        return f"not a PostgreSQL URL or connection string; {POSTGRES_FORM}"
    if is_url:
        problem = _url_parts_problem(url)
        if problem:
            return f"not a valid PostgreSQL URL: {problem}; {POSTGRES_FORM}"
        if _PLAIN_POSTGRES_URL.match(url):  # libpq accepts it: no need to load psycopg to ask
            return None
    from psycopg.conninfo import conninfo_to_dict

    from bot.config.pgurl import pg_params

    sorted_params = pg_params(url)  # Prisma's parameters are opsbot's; unknown ones never reach libpq
    if sorted_params.problem:
        return f"not a valid PostgreSQL URL: {sorted_params.problem}; {POSTGRES_FORM}"
    try:
        params = conninfo_to_dict(sorted_params.conninfo)
    except Exception:  # noqa: BLE001 - libpq's message quotes the string, password included
        what = "URL (percent-encode special characters)" if is_url else "connection string (quote values with spaces)"
        return f"not a valid PostgreSQL {what}; {POSTGRES_FORM}"
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            return f"not a valid PostgreSQL {'URL' if is_url else 'connection string'}: the port must be a number " \
                   f"from 1 to 65535; {POSTGRES_FORM}"
    return None


# user[:password]@host[:port][/database] of unreserved characters, no query, no escapes: a URL libpq takes as it is
# (the port's range is _url_parts_problem's check). Anything else is asked of libpq itself.
_PLAIN_POSTGRES_URL = re.compile(r"postgres(?:ql)?://(?:[\w.~-]+(?::[\w.~-]*)?@)?[A-Za-z0-9.-]+(?::\d{1,5})?(?:/[\w.~-]*)?\Z",
                                 re.ASCII)


def _url_parts_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the host or port is malformed (a port is a number from 1 to 65535)"
    if port == 0:
        return "the port must be a number from 1 to 65535"
    if re.search(r"%(?![0-9A-Fa-f]{2})", parts.netloc):
        return "a '%' in the user or password is not followed by two hex digits (percent-encode it as %25)"
    return None


def credentials(text: str) -> list[tuple[str, str]]:
    """Secrets inside a URL, the password and secret query parameters: (as written, decoded) each."""
    if "://" not in text:
        return []
    try:
        parts = urlsplit(text.strip())
    except ValueError:
        return []
    found = []
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    for pair in parts.query.split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and is_secret_param(unquote(name)):
            found.append(value)
    return [(value, unquote(value)) for value in found if value]


def conninfo_credentials(text: str) -> list[str]:
    """Passwords inside a key=value PostgreSQL connection string."""
    if "://" in text or "=" not in text:
        return []
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(text)
    except Exception:  # noqa: BLE001 - not a connection string after all
        return []
    return [str(params[name]) for name in _CONNINFO_SECRETS if params.get(name)]

