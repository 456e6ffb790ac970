"""Redis URLs: the ones redis-py reads, and ``redis+sentinel://`` for Redis behind Sentinel.

redis-py reads ``redis://``, ``rediss://`` and ``unix://`` URLs itself but has no URL for
Sentinel. Kiosk uses the form other Python projects settled on (the Redis-Sentinel-Url
package, LangChain, RedisVL, Prefect, docket)::

    redis+sentinel://[[USERNAME]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]
                     [?sentinel_username=NAME&sentinel_password=SECRET]

- ``HOST[:PORT]``: the Sentinels, comma-separated; PORT defaults to 26379. An IPv6 address
  goes in brackets (``[::1]:26379``).
- ``MASTER``: the name the Sentinels monitor (``sentinel monitor MASTER ...``); required.
- ``DB``: the database number, 0 when left out.
- ``USERNAME``/``PASSWORD``: for the Redis servers (master and replicas), percent-encoded.
- ``sentinel_username``/``sentinel_password``: for the Sentinels themselves, when they ask.

Nothing here connects anywhere (settings check URLs with it); :func:`kiosk.queue.connect`
builds the client. Errors name what is wrong and never show a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
SENTINEL_FORM = "redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]"
_MEMBER = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[^:]*))?$")


class RedisUrlError(ValueError):
    """A Redis URL that Kiosk cannot use; the message says what is wrong."""


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def is_sentinel_url(url: str) -> bool:
    return scheme_of(url) == SENTINEL_SCHEME


def redacted(url: str) -> str:
    """The URL with its passwords replaced by ***, for messages and logs."""
    url = re.sub(r"^([^:/]+://[^:@/]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"(sentinel_password=)[^&#]*", r"\1***", url)


def check_redis_url(url: str) -> str:
    """The URL unchanged when Kiosk can use it; :class:`RedisUrlError` saying why not."""
    scheme = scheme_of(url)
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
    elif scheme not in PLAIN_SCHEMES:
        raise RedisUrlError(
            f"{redacted(url)!r} is not a Redis URL: it must start with redis://, rediss://, "
            f"unix:// or {SENTINEL_SCHEME}://"
        )
    return url


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The Sentinels, master name, database and credentials of a ``redis+sentinel://`` URL."""
    if not is_sentinel_url(url):
        raise RedisUrlError(f"{redacted(url)!r} does not start with {SENTINEL_SCHEME}://")
    rest, _, query = url.partition("://")[2].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, members = netloc.rpartition("@")
    username, password = _credentials(userinfo)
    master, db = _master_and_db(url, path)
    options = _options(url, query)
    return SentinelUrl(
        sentinels=tuple(_member(url, text) for text in _members(url, members)),
        master=master,
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )


def _fail(url: str, problem: str) -> RedisUrlError:
    return RedisUrlError(f"{redacted(url)!r}: {problem}; the form is {SENTINEL_FORM}")


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, secret = userinfo.partition(":")
    return (unquote(user) or None), (unquote(secret) if colon and secret else None)


def _members(url: str, netloc: str) -> list[str]:
    members = [m.strip() for m in netloc.split(",")]
    if not any(members):
        raise _fail(url, "it names no Sentinel")
    if not all(members):
        raise _fail(url, "an empty Sentinel address between commas")
    return members


def _member(url: str, text: str) -> tuple[str, int]:
    found = _MEMBER.match(text)
    if not found:
        raise _fail(url, f"Sentinel address {text!r} is not HOST[:PORT] (IPv6 in brackets)")
    host = found["v6"] or found["host"]
    port = found["port"]
    if port is None:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _fail(url, f"Sentinel address {text!r} has port {port!r}, not a number 1-65535")
    return host, int(port)


def _master_and_db(url: str, path: str) -> tuple[str, int]:
    master, _, db = path.lstrip("/").partition("/")
    master = unquote(master)
    if not master:
        raise _fail(url, "it names no master (the name the Sentinels monitor)")
    if master.isdigit() and not db:
        raise _fail(url, f"{master!r} looks like a database number: name the master before it")
    db = db.rstrip("/")
    if not db:
        return master, 0
    if not db.isdigit():
        raise _fail(url, f"database {db!r} is not a number (0, 1, ...)")
    return master, int(db)


def _options(url: str, query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise _fail(url, f"its query is not NAME=VALUE&...: {exc}") from None
    unknown = sorted(set(parsed) - set(SENTINEL_OPTIONS))
    if unknown:
        raise _fail(
            url, f"unknown option {', '.join(unknown)} (known: {', '.join(SENTINEL_OPTIONS)})"
        )
    return {name: values[-1] for name, values in parsed.items()}
