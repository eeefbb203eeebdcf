"""Connecting to Redis for the redis:// transport.

Responsible for: turning a broker URL (``redis://`` or ``rediss://``, with an
optional user, password and database) into a ``redis.asyncio`` client;
waiting for Redis with backoff while it is unreachable (logging where it is
trying, never the password); refusing Redis older than 7.0 with a clear
message; and the retry helper the consumer and producer use when Redis goes
away mid-run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from yarl import URL

from ...schemas.errors import TierstreamError

T = TypeVar("T")

#: The oldest Redis the transport works with: ``XADD key 0-*`` (explicit
#: milliseconds, automatic sequence) and ``entries-added`` in ``XINFO STREAM``
#: both arrived in Redis 7.0.
MIN_REDIS_VERSION: tuple[int, int] = (7, 0)

#: Errors that mean "Redis is not reachable right now": retry later.
#: ``BusyLoadingError`` (Redis still loading its data after a restart) is a
#: ``ConnectionError`` subclass in redis-py, so it is covered too.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    OSError,
)


#: URL query parameters passed to redis-py's TLS connection (as in redis-py's
#: own ``from_url``): CA bundle, client certificate and key, verification.
TLS_QUERY_OPTIONS = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


class RedisVersionError(TierstreamError):
    """The Redis server is older than the transport needs."""


class TransportConfigError(TierstreamError, ValueError):
    """The broker URL cannot be used by the redis:// transport."""


@dataclass(frozen=True)
class RedisLocation:
    """Where the transport connects: everything in the broker URL, parsed."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool
    #: TLS options from the URL query (``rediss://...?ssl_ca_certs=/ca.pem``):
    #: names and values as redis-py takes them, see :data:`TLS_QUERY_OPTIONS`.
    tls_options: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        """``host:port/db`` for log lines: never includes the user or password."""
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"

    def __repr__(self) -> str:  # keep the password out of reprs in tracebacks
        return f"RedisLocation({self.where}, user={self.username!r})"


def parse_url(url: str | URL) -> RedisLocation:
    """Parse a broker URL: ``redis[s]://[[user]:password@]host[:port][/db]``.

    The database may also be given as ``?db=N``. Percent-encoded user names
    and passwords are decoded. ``rediss://`` URLs may carry TLS options in
    the query (:data:`TLS_QUERY_OPTIONS`, e.g. ``?ssl_ca_certs=/etc/ca.pem``);
    they override what Faust's ``ssl_context`` setting gives.
    """
    u = url if isinstance(url, URL) else URL(str(url))
    scheme = (u.scheme or "redis").lower()
    if scheme not in ("redis", "rediss"):
        raise TransportConfigError(f"broker URL scheme must be redis:// or rediss://, got {scheme}")
    db = 0
    path = u.path.strip("/")
    if path:
        if not path.isdigit():
            raise TransportConfigError(f"database in broker URL must be a number, got {path!r}")
        db = int(path)
    elif "db" in u.query:
        raw = u.query["db"]
        if not raw.isdigit():
            raise TransportConfigError(f"db= in broker URL must be a number, got {raw!r}")
        db = int(raw)
    tls_options = tuple((k, u.query[k]) for k in TLS_QUERY_OPTIONS if k in u.query)
    if tls_options and scheme != "rediss":
        raise TransportConfigError(
            f"TLS options {[k for k, _ in tls_options]} need a rediss:// broker URL"
        )
    username = unquote(u.raw_user) if u.raw_user else None
    password = unquote(u.raw_password) if u.raw_password is not None else None
    return RedisLocation(
        host=u.host or "127.0.0.1",
        port=u.port or 6379,
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss",
        tls_options=tls_options,
    )


def parse_version(version: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0, 15)``; non-numeric tails (``"7.2.4-rc1"``) are ignored."""
    parts: list[int] = []
    for piece in version.strip().split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_redis_version(version: str) -> None:
    """Raise :class:`RedisVersionError` unless ``version`` is at least 7.0."""
    found = parse_version(version)
    if not found or found[: len(MIN_REDIS_VERSION)] < MIN_REDIS_VERSION:
        need = ".".join(map(str, MIN_REDIS_VERSION))
        raise RedisVersionError(
            f"Redis {version or '(unknown version)'} is too old for the redis:// transport: "
            f"it needs Redis {need} or newer (XADD with '0-*' ids and XINFO STREAM "
            f"entries-added). Upgrade Redis."
        )


def create_client(
    location: RedisLocation,
    *,
    ssl_context: ssl.SSLContext | None = None,
    socket_timeout: float = 30.0,
) -> aioredis.Redis:
    """A ``redis.asyncio`` client for ``location``.

    redis-py's own retries are switched off: the transport retries itself
    where a retry is safe and says so in the log (a silently retried XADD
    could be written twice).
    """
    kwargs: dict[str, Any] = {
        "host": location.host,
        "port": location.port,
        "db": location.db,
        "username": location.username,
        "password": location.password,
        # Blocking XREADs last up to a second; anything much longer than
        # that means the connection is dead (e.g. a network partition).
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }
    if location.tls:
        kwargs["ssl"] = True
        if ssl_context is not None:
            # redis-py builds its own context from parameters; map the
            # common case (verify or not, custom CA) from the Faust setting.
            kwargs["ssl_cert_reqs"] = (
                "required" if ssl_context.verify_mode != ssl.CERT_NONE else "none"
            )
            kwargs["ssl_check_hostname"] = ssl_context.check_hostname
        for name, value in location.tls_options:
            if name == "ssl_check_hostname":
                kwargs[name] = value.lower() in ("1", "true", "yes")
            else:
                kwargs[name] = value
    return aioredis.Redis(**kwargs)


class Backoff:
    """Exponential backoff with jitter: 0.1 s, 0.2 s, ... up to ``maximum``."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (and count this attempt)."""
        delay = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        # Jitter so that many workers do not reconnect in lockstep.
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


async def connect(
    client: aioredis.Redis,
    location: RedisLocation,
    log: logging.Logger,
    should_stop: Callable[[], bool] = lambda: False,
    backoff: Backoff | None = None,
) -> str:
    """Wait until Redis answers (retrying with backoff), check its version.

    Returns the server version. Raises :class:`RedisVersionError` if it is too old.
    """
    backoff = backoff or Backoff(maximum=5.0)
    while True:
        try:
            info = await client.info("server")
            break
        except redis.exceptions.AuthenticationError:
            # A subclass of ConnectionError in redis-py, but retrying a wrong
            # password does not help: fail at once.
            raise
        except CONNECTION_ERRORS as exc:
            if should_stop():
                raise
            delay = backoff.next_delay()
            log.warning(
                "Redis at %s is not reachable (%s); retrying in %.1f s (attempt %d)",
                location.where,
                exc,
                delay,
                backoff.attempt,
            )
            await asyncio.sleep(delay)
    version = str(info.get("redis_version", ""))
    check_redis_version(version)
    if backoff.attempt:
        log.info("Connected to Redis %s at %s", version, location.where)
    return version


async def retrying(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    location: RedisLocation,
    log: logging.Logger,
    should_stop: Callable[[], bool],
    backoff: Backoff | None = None,
) -> T:
    """Run ``op`` until it succeeds, sleeping with backoff on connection errors.

    Only for operations that are safe to repeat (reads, HSET of offsets,
    metadata). Gives up (re-raises) once ``should_stop()`` is true.
    """
    backoff = backoff or Backoff()
    while True:
        try:
            return await op()
        except CONNECTION_ERRORS as exc:
            if should_stop():
                raise
            delay = backoff.next_delay()
            log.warning(
                "%s: Redis at %s unreachable (%s); retrying in %.1f s",
                what,
                location.where,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
