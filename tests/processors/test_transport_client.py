"""redis:// transport: URL parsing, the Redis version check, connecting with backoff."""

from __future__ import annotations

import logging
import socket

import faust
import pytest
import redis.asyncio as aioredis
from tierstream.processors.transport import Transport
from tierstream.processors.transport.client import (
    Backoff,
    RedisVersionError,
    TransportConfigError,
    check_redis_version,
    connect,
    create_client,
    parse_url,
)


def test_parse_plain_url() -> None:
    loc = parse_url("redis://127.0.0.1:6379/0")
    assert (loc.host, loc.port, loc.db, loc.username, loc.password, loc.tls) == (
        "127.0.0.1",
        6379,
        0,
        None,
        None,
        False,
    )
    assert loc.where == "redis://127.0.0.1:6379/0"


def test_parse_defaults() -> None:
    loc = parse_url("redis://redis.internal")
    assert (loc.host, loc.port, loc.db) == ("redis.internal", 6379, 0)


def test_parse_user_password_db_and_tls() -> None:
    loc = parse_url("rediss://alice:s%40cret@cache.example:6380/3")
    assert loc.tls
    assert (loc.host, loc.port, loc.db) == ("cache.example", 6380, 3)
    assert (loc.username, loc.password) == ("alice", "s@cret")
    # The password never shows in what gets logged or printed.
    assert "s@cret" not in loc.where and "s@cret" not in repr(loc)
    assert loc.where == "rediss://cache.example:6380/3"


def test_parse_password_only_and_db_query() -> None:
    loc = parse_url("redis://:pw@h?db=7")
    assert (loc.username, loc.password, loc.db) == (None, "pw", 7)


@pytest.mark.parametrize("url", ["kafka://h:9092", "redis://h:6379/x"])
def test_parse_rejects(url: str) -> None:
    with pytest.raises(TransportConfigError):
        parse_url(url)


def test_create_client_carries_credentials_and_tls() -> None:
    client = create_client(parse_url("rediss://bob:pw@h:6390/2"))
    kw = client.connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"]) == (
        "h",
        6390,
        2,
        "bob",
        "pw",
    )
    assert "SSL" in client.connection_pool.connection_class.__name__


@pytest.mark.parametrize("version", ["7.0.0", "7.0.15", "7.2.4", "8.0.1", "10.0"])
def test_version_ok(version: str) -> None:
    check_redis_version(version)


@pytest.mark.parametrize("version", ["6.2.14", "5.0.7", "6.9.9", ""])
def test_version_too_old_names_found_and_needed(version: str) -> None:
    with pytest.raises(RedisVersionError) as exc:
        check_redis_version(version)
    message = str(exc.value)
    assert "7.0 or newer" in message
    if version:
        assert f"Redis {version} is too old" in message


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(initial=0.1, maximum=1.0)
    delays = [b.next_delay() for _ in range(10)]
    assert delays[0] <= 0.1
    assert max(delays) <= 1.0
    assert delays[-1] >= 0.5  # at the cap (minus jitter)
    b.reset()
    assert b.next_delay() <= 0.1


def test_app_with_redis_broker_uses_this_transport() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://u:p@127.0.0.1:6380/1"):
        app = faust.App("t-transport-url", broker=url)
        assert isinstance(app.transport, Transport)


async def test_connect_checks_version_of_real_redis(redis_url: str) -> None:
    loc = parse_url(redis_url)
    client = create_client(loc)
    try:
        version = await connect(client, loc, logging.getLogger("t"))
        check_redis_version(version)
    finally:
        await client.aclose()


async def test_connect_retries_and_logs_where_never_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loc = parse_url(f"redis://user:topsecret@127.0.0.1:{port}/4")
    client: aioredis.Redis = create_client(loc)
    attempts = 0

    def should_stop() -> bool:
        nonlocal attempts
        attempts += 1
        return attempts > 3

    caplog.set_level(logging.WARNING)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the last connection error
            await connect(
                client,
                loc,
                logging.getLogger("t"),
                should_stop,
                backoff=Backoff(initial=0.01, maximum=0.02),
            )
    finally:
        await client.aclose()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert all(f"127.0.0.1:{port}/4" in line for line in lines)
    assert not any("topsecret" in line for line in lines)
