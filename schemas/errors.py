"""The root exception and the errors of the event contract."""

from __future__ import annotations


class TierstreamError(Exception):
    """Root of every error tierstream raises on purpose."""


class ValidationError(TierstreamError, ValueError):
    """A record does not satisfy its schema.

    ``field`` is a dotted path (``tier_latencies.redis.latency_ms``), ``problem``
    says what is wrong in words an operator can act on.
    """

    def __init__(self, field: str, problem: str, *, line: int | None = None) -> None:
        self.field = field
        self.problem = problem
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{field}: {problem}")

    def at_line(self, line: int) -> ValidationError:
        """The same error, located at input line ``line`` (1-based)."""
        return ValidationError(self.field, self.problem, line=line)


class WireFormatError(TierstreamError, ValueError):
    """A stream entry is not in the tierstream wire format (see ``schemas.wire``)."""
