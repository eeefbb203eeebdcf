"""Word count with repartitioning.

``posts`` (JSON strings, ``PARTITIONS`` partitions) -> agent ``split_posts`` splits
each post into words and re-keys every word to agent ``count_words`` through
``count_words.send(key=word, value=word)``; that agent's topic is ``words``, so
each word lands on the partition of its key, and ``word_counts`` counts per word
(changelog ``<app id>-word_counts-changelog``).

Knobs: ``COUNT_DELAY`` (seconds to sleep per counted word, default 0, to make a
kill land mid-stream).

``GET /state/`` returns ``{"ready": ..., "counts": {word: n}}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust import StreamT

from apps.common import PARTITIONS, add_state_page, env_float, make_app

POSTS_TOPIC = "posts"
WORDS_TOPIC = "words"
TABLE = "word_counts"

COUNT_DELAY = env_float("COUNT_DELAY", 0.0)

app = make_app("wordcount")
posts = app.topic(POSTS_TOPIC, key_type=str, value_type=str, partitions=PARTITIONS)
words = app.topic(WORDS_TOPIC, key_type=str, value_type=str, partitions=PARTITIONS)
word_counts = app.Table(TABLE, default=int, partitions=PARTITIONS)


@app.agent(words)
async def count_words(stream: StreamT[str]) -> None:
    async for word in stream:
        if COUNT_DELAY:
            await asyncio.sleep(COUNT_DELAY)
        word_counts[word] += 1


@app.agent(posts)
async def split_posts(stream: StreamT[str]) -> None:
    async for post in stream:
        for word in post.split():
            await count_words.send(key=word, value=word)


def _state() -> dict[str, Any]:
    return {"counts": {str(k): int(v) for k, v in word_counts.items()}}


add_state_page(app, _state)
