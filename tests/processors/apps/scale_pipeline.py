"""The pipeline test app (``apps.pipeline_app``) as one of several workers.

Adds a short group session (``BROKER_SESSION_TIMEOUT``, default 4 s;
heartbeats every ``BROKER_HEARTBEAT_INTERVAL``, default 0.3 s) so a crashed
worker's partitions move within seconds, not Faust's 60 s default.
"""

from __future__ import annotations

from apps.common import env_float
from apps.pipeline_app import app

app.conf.broker_session_timeout = env_float("BROKER_SESSION_TIMEOUT", 4.0)
app.conf.broker_heartbeat_interval = env_float("BROKER_HEARTBEAT_INTERVAL", 0.3)

__all__ = ["app"]
