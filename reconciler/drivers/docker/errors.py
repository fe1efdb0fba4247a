"""The engine's errors as the project's own (pure): see :func:`engine_error`."""

from __future__ import annotations

from reconciler.errors import (
    Conflict,
    DriverError,
    NotFound,
    PermanentDriverError,
    RuntimeUnreachable,
    TemporaryDriverError,
)

_TEMPORARY_WORDS = ("toomanyrequests", "timeout", "timed out", "connection", "temporar", "EOF")


def engine_error(
    status: int,
    message: str,
    subject: str,
    action: str,
    *,
    missing: type[PermanentDriverError] = NotFound,
) -> DriverError:
    """The project's error for an engine answer: 404 → ``missing`` (``NotFound``
    unless the action reads 404 otherwise), 409 → ``Conflict``, 5xx and no answer →
    ``TemporaryDriverError``, other 4xx → ``PermanentDriverError``. ``status`` 0 is
    an error inside a progress stream (a pull), judged by its words."""
    text = f"{subject}: {action} failed: {message.strip()}"
    if status == 404:
        return missing(text)
    if status == 409:
        return Conflict(text)
    if status == 900:  # aiodocker: the engine did not answer
        return RuntimeUnreachable(text, delay=5.0)
    if status >= 500:
        return TemporaryDriverError(text, delay=2.0)
    if status == 0 and any(w.lower() in message.lower() for w in _TEMPORARY_WORDS):
        return TemporaryDriverError(text, delay=5.0)
    return PermanentDriverError(text)
