"""Errors of the sinks (each a :class:`TierstreamError`)."""

from __future__ import annotations

from ..schemas.errors import TierstreamError


class RuleFileError(TierstreamError, ValueError):
    """An alert rule file is bad. ``path``, ``line`` (1-based, or None when the
    problem has no single line) and ``problem`` say where and what."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


class HistoryError(TierstreamError):
    """The history database cannot be used (unreachable, or newer schema than this code)."""


class SubscribeError(TierstreamError, ValueError):
    """A subscription was asked for something that does not exist."""
