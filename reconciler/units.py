"""Sizes as the spec writes them (standard library only: the process runtime's
monitor and the daemon read them without loading the spec models)."""

from __future__ import annotations

_MEMORY_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def memory_bytes(text: str) -> int:
    """A ``resources.memory`` the spec checked (``512Mi``: Ki, Mi, Gi or Ti) in bytes."""
    return int(text[:-2]) * _MEMORY_UNITS[text[-2:]]
