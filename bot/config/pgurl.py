"""What libpq gets from a PostgreSQL URL, and what opsbot itself takes from it (Prisma's parameters).

Usage::

    params = pg_params("postgresql://app@db:6543/app?schema=crm&pgbouncer=true&connection_limit=1")
    params.conninfo      # 'postgresql://app@db:6543/app': only parameters libpq knows
    params.pooler        # 'transaction' (pgbouncer=true): no prepared statements, transaction-scoped settings
    params.schema        # 'crm': the search_path of the application's tables
    params.pool_size     # 1 (connection_limit)
    params.notes         # what was taken or left out, for `opsbot check`; never a value of the URL

Applications (Prisma's above all) put parameters in ``DATABASE_URL`` that libpq refuses
("invalid URI query parameter"). opsbot reads that same variable, so every query parameter
is sorted here: libpq's own pass through, Prisma's are mapped (:data:`PRISMA`), anything
else is left out and named in a note. Target settings (``username``, ``password``, ``sslmode``,
``ca_file``...) are applied on top with :func:`with_settings`. Messages name parameters, never
their values, and never quote the URL: it may hold a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

__all__ = ["MAX_PARAMS", "POOLERS", "PRISMA", "PgParams", "libpq_keywords", "pg_params", "with_settings"]

POOLERS = ("transaction", "session", "none")
MAX_PARAMS = 64  # more query parameters than this is not a connection URL
PRISMA = {  # Prisma's connection-URL parameters and what opsbot does with each
    "schema": "the search_path of the application's tables",
    "pgbouncer": "true: a transaction-mode pooler (no prepared statements, transaction-scoped settings)",
    "statement_cache_size": "0: no prepared statements",
    "connection_limit": "the size of opsbot's own connection pool",
    "pool_timeout": "how long opsbot waits for a free pooled connection (0: no limit)",
    "sslcert": "without sslkey, Prisma's server CA certificate: libpq's sslrootcert",
    "sslidentity": "left out: libpq takes no PKCS#12 bundle; set cert_file and key_file",
    "sslaccept": "left out: set sslmode (verify-full checks the certificate)",
    "socket_timeout": "left out: libpq has no socket timeout (statement_timeout bounds queries)",
    "max_idle_connection_lifetime": "left out",
}
_NO_TIMEOUT = 3600.0  # Prisma's pool_timeout=0 (wait for ever): an hour


@dataclass(frozen=True)
class PgParams:
    conninfo: str
    pooler: str = "none"
    prepare: bool = True  # psycopg's automatic prepared statements (off behind a transaction-mode pooler)
    schema: str | None = None
    pool_size: int | None = None
    pool_timeout: float | None = None
    notes: tuple[str, ...] = field(default=())
    problem: str | None = None  # the URL cannot be used; said without its content


_KEYWORDS: frozenset[str] | None = None


def libpq_keywords() -> frozenset[str]:
    """The connection parameters the installed libpq knows (``psycopg.pq.Conninfo.get_defaults``)."""
    global _KEYWORDS
    if _KEYWORDS is None:
        from psycopg import pq

        _KEYWORDS = frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())
    return _KEYWORDS


def _is_url(text: str) -> bool:
    return "://" in text and not re.match(r"^\s*[A-Za-z_]+\s*=", text)


def _name(raw: str) -> str:
    """A parameter name fit for a message: decoded, printable, short."""
    text = re.sub(r"[^\w.-]", "?", unquote(raw))[:40]
    return text or "(empty)"


def pg_params(url: str, pooler: str | None = None) -> PgParams:
    """Sort the query parameters of ``url``; ``pooler`` (a setting) wins over ``pgbouncer=true``."""
    if not _is_url(url):
        return PgParams(url, pooler or "none", prepare=(pooler or "none") != "transaction")
    base, _, rest = url.partition("?")
    query, hash_, _fragment = rest.partition("#")
    pairs = [pair for pair in query.split("&") if pair] if query else []
    if len(pairs) > MAX_PARAMS:
        return PgParams(base, pooler or "none", problem=f"the URL has {len(pairs)} query parameters"
                                                        f" (at most {MAX_PARAMS})")
    keep: list[str] = []
    prisma: dict[str, str] = {}
    notes: list[str] = []
    keywords = libpq_keywords()
    names = [unquote(pair.partition("=")[0]) for pair in pairs]
    first = query.partition("&")[0]  # u:pa?ss@db/app: the password's tail, the host and the database
    if "@" in first.partition("=")[0] or re.search(r"@[^/]*/", first.partition("=")[2]):
        return PgParams(base, pooler or "none", problem="a '?' in the user or password must be percent-encoded"
                                                        " (%3F), or the rest is read as the query")
    for pair, name in zip(pairs, names):
        value = unquote(pair.partition("=")[2])
        if name == "sslcert" and "sslkey" in names:
            keep.append(pair)  # with a key: libpq's client certificate
        elif name in PRISMA:
            prisma[name] = value
        elif name in keywords:
            keep.append(pair)
        else:
            notes.append(f"query parameter {_name(name)!r} left out: neither libpq nor Prisma knows it")
    if hash_:  # libpq would take it as part of the last value; Prisma's URL parser drops it
        notes.append("the URL's #fragment left out")
    params = PgParams(base + ("?" + "&".join(keep) if keep else ""), pooler or "none", notes=())
    params = _prisma(params, prisma, notes, explicit_pooler=pooler is not None)
    return replace(params, notes=tuple(notes), prepare=params.prepare and params.pooler != "transaction")


def _prisma(params: PgParams, found: dict[str, str], notes: list[str], *, explicit_pooler: bool) -> PgParams:
    changes: dict = {}
    if "pgbouncer" in found:
        if found["pgbouncer"].lower() == "true" and not explicit_pooler:
            changes["pooler"] = "transaction"
        notes.append("pgbouncer=" + ("true: transaction-mode pooler" if found["pgbouncer"].lower() == "true"
                                     else "false") + (" (the pooler setting wins)" if explicit_pooler else ""))
    if found.get("statement_cache_size") == "0":
        changes["prepare"] = False
        notes.append("statement_cache_size=0: no prepared statements")
    if "schema" in found:
        schema = found["schema"]
        if 0 < len(schema.encode()) <= 63 and "\x00" not in schema:
            changes["schema"] = schema
            notes.append("schema: the search_path of the application's tables")
        else:
            notes.append("schema left out: a schema name is 1 to 63 bytes")
    for name, key, kind in (("connection_limit", "pool_size", int), ("pool_timeout", "pool_timeout", float)):
        if name in found:
            try:
                number = kind(found[name])
                if not (0 <= number <= 10_000) or (name == "connection_limit" and number == 0):
                    raise ValueError
            except ValueError:
                notes.append(f"{name} left out: not a number in range")
                continue
            changes[key] = number if not (name == "pool_timeout" and number == 0) else _NO_TIMEOUT
            notes.append(f"{name}: {PRISMA[name]}")
    if "sslcert" in found:
        changes["conninfo"] = _add_query(params.conninfo, "sslrootcert", found["sslcert"])
        notes.append("sslcert (Prisma's server CA certificate): used as libpq's sslrootcert")
    for name in ("sslidentity", "sslaccept", "socket_timeout", "max_idle_connection_lifetime"):
        if name in found:
            notes.append(f"{name} {PRISMA[name]}")
    return replace(params, **changes)


def _add_query(url: str, name: str, value: str) -> str:
    from urllib.parse import quote

    return url + ("&" if "?" in url else "?") + f"{name}={quote(value, safe='')}"


def with_settings(params: PgParams, **settings: str | None) -> PgParams:
    """Target settings over the URL's (``user``, ``password``, ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``)."""
    given = {key: value for key, value in settings.items() if value is not None and value != ""}
    if not given:
        return params
    from psycopg.conninfo import make_conninfo

    return replace(params, conninfo=make_conninfo(params.conninfo, **given))
