"""redis:// transport over TLS (``rediss://``) and with an ACL user, against
private redis-servers started by the test (the local redis-server is built
with TLS): a CA and a server certificate are made with openssl in the test's
tmp dir; the CA is given in the URL (``?ssl_ca_certs=``)."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
import redis
from faust.types import TP
from tierstream.processors.transport import Transport
from transport_consumer import connected_consumer

pytestmark = pytest.mark.timeout(60)
log = logging.getLogger("test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tierstream test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
        cwd=d,
    )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed")
    make_certs(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(tmp_path / "server.pem"),
            "--tls-key-file",
            str(tmp_path / "server.key"),
            "--tls-ca-cert-file",
            str(tmp_path / "ca.pem"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(
        host="localhost",
        port=port,
        ssl=True,
        ssl_ca_certs=str(tmp_path / "ca.pem"),
        socket_timeout=0.5,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                break
        except (redis.ConnectionError, OSError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("TLS redis-server did not start")
            time.sleep(0.1)
    client.close()
    yield port, tmp_path / "ca.pem"
    proc.terminate()
    proc.wait(5)


async def roundtrip(url: str, topic: str) -> list[bytes]:
    """Produce 5 messages through the transport at ``url`` and fetch them back."""
    app = faust.App(f"tls-{topic}", broker=url, producer_linger=0.005)
    await app.producer.start()
    try:
        for i in range(5):
            meta = await app.producer.send_and_wait(topic, None, b"m%d" % i, 0, None, None)
            assert meta.offset == i
        async with connected_consumer(app) as consumer:
            tp = TP(topic, 0)
            consumer._assigned = frozenset({tp})
            consumer._set_position(tp, 0)
            got = await consumer._getmany({tp}, 0.1)
            return [r[2] for r in got[tp]]
    finally:
        await app.producer.stop()


async def test_produce_and_consume_over_tls_with_the_ca_in_the_url(
    tls_redis: tuple[int, Path], unique: str
) -> None:
    port, ca = tls_redis
    url = f"rediss://localhost:{port}/0?ssl_ca_certs={ca}"
    assert await roundtrip(url, unique) == [b"m%d" % i for i in range(5)]


async def test_tls_without_the_ca_is_refused(tls_redis: tuple[int, Path], unique: str) -> None:
    port, _ca = tls_redis
    app = faust.App(unique, broker=f"rediss://localhost:{port}/0")
    transport = app.transport
    assert isinstance(transport, Transport)
    # Certificate verification fails: an SSL error, retried like any
    # connection error until told to stop.
    attempts = 0

    def stop() -> bool:
        nonlocal attempts
        attempts += 1
        return attempts > 1

    with pytest.raises((redis.ConnectionError, OSError)) as info:
        await transport.connect(log, stop)
    assert "certificate" in str(info.value).lower()


async def test_acl_user_and_password_in_the_url(private_redis: Any, unique: str) -> None:
    admin = redis.Redis(port=private_redis.port)
    admin.execute_command("ACL", "SETUSER", "alice", "on", ">s3cr#t", "~*", "&*", "+@all")
    admin.execute_command("ACL", "SETUSER", "default", "off")
    admin.close()
    url = f"redis://alice:s3cr%23t@127.0.0.1:{private_redis.port}/0"
    assert await roundtrip(url, unique) == [b"m%d" % i for i in range(5)]
    wrong = faust.App(f"{unique}-w", broker=f"redis://alice:nope@127.0.0.1:{private_redis.port}/0")
    transport = wrong.transport
    assert isinstance(transport, Transport)
    with pytest.raises(redis.AuthenticationError):
        await transport.connect(log, lambda: False)
