"""A separate process that publishes posts through a Faust client of its own.

``python -m apps.sender <count>`` sends ``<count>`` posts, each the text of
``$POST_TEXT`` (default ``"alpha beta gamma delta"``), keyed ``ext-<i>``, to
topic ``$TOPIC`` (default ``posts``) through ``app.topic(...).send()`` of a
``faust.App`` that is not the worker's (id ``$SENDER_ID``, default
``external-sender``), then flushes and prints ``sent <count>``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import faust

PARTITIONS = int(os.environ.get("PARTITIONS", "8"))


async def send_posts(count: int) -> None:
    app = faust.App(
        os.environ.get("SENDER_ID", "external-sender"),
        broker=os.environ["BROKER_URL"],
        autodiscover=False,
        web_enabled=False,
    )
    topic = app.topic(
        os.environ.get("TOPIC", "posts"), key_type=str, value_type=str, partitions=PARTITIONS
    )
    text = os.environ.get("POST_TEXT", "alpha beta gamma delta")
    producer = app.producer
    await producer.start()
    try:
        futures = [await topic.send(key=f"ext-{i}", value=text) for i in range(count)]
        await producer.flush()
        for fut in futures:
            await fut  # raises if the transport failed to deliver it
    finally:
        await producer.stop()
    print(f"sent {count}", flush=True)


if __name__ == "__main__":
    asyncio.run(send_posts(int(sys.argv[1])))
