"""``tierstream worker``: a thin wrapper over Faust's worker for the pipeline app.

Options are handed to the app as the ``TIERSTREAM_*`` environment variables
it reads at import (``tierstream.processors.pipeline.app``), then Faust's own
command line runs ``worker`` for it, exactly as
``faust -A tierstream.processors.pipeline.app worker`` would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from tierstream.cli import main, redis_option

#: (option, environment variable, type, help)
WINDOW_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--window-s", "TIERSTREAM_WINDOW_S", int, "Tumbling window, whole seconds [60]."),
    ("--hop-size-s", "TIERSTREAM_HOP_SIZE_S", int, "Hopping view: window length, s [300]."),
    ("--hop-step-s", "TIERSTREAM_HOP_STEP_S", int, "Hopping view: step, s [60]."),
    ("--grace-s", "TIERSTREAM_GRACE_S", float, "Wall-clock grace after a window ends [5]."),
    ("--lateness-s", "TIERSTREAM_LATENESS_S", float, "Allowed out-of-orderness, s [5]."),
    ("--merge-timeout-s", "TIERSTREAM_MERGE_TIMEOUT_S", float, "Merge timeout, s [60]."),
    ("--capacity", "TIERSTREAM_HOT_QUERIES_CAPACITY", int, "Heavy-hitter capacity [1024]."),
    ("--partitions", "TIERSTREAM_ACCESS_PARTITIONS", int, "Access topic partitions [8]."),
    ("--costs", "TIERSTREAM_TIER_COSTS", str, "Price per access: tier=price,tier=price."),
)


def window_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the window options (each also read from its environment variable)."""
    for opt, env, typ, text in reversed(WINDOW_OPTIONS):
        f = click.option(opt, envvar=env, type=typ, default=None, help=f"{text} Env: {env}.")(f)
    return f


def window_env(options: dict[str, Any]) -> dict[str, str]:
    """The environment variables of the window options that were given."""
    out = {}
    for opt, env, _typ, _text in WINDOW_OPTIONS:
        value = options.get(opt.lstrip("-").replace("-", "_"))
        if value is not None:
            out[env] = str(value)
    return out


@main.command(context_settings={"ignore_unknown_options": True})
@redis_option
@click.option("--web-port", default=6066, show_default=True, help="Port of the JSON views.")
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.option("--datadir", default=None, help="Faust data directory.")
@window_options
def worker(
    redis_url: str, web_port: int, loglevel: str, datadir: str | None, **options: Any
) -> None:
    """Run a pipeline worker: windows, partials, merge, summaries, web views."""
    os.environ["TIERSTREAM_REDIS_URL"] = redis_url
    os.environ.update(window_env(options))
    from tierstream.processors.pipeline.app import app

    argv = [sys.argv[0]]
    if datadir:
        argv += ["--datadir", datadir]
    argv += ["worker", "-l", loglevel, "--web-port", str(web_port)]
    sys.argv = argv
    app.main()
