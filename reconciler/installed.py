"""Where the host's helper programs are installed (a lookup, no side effect)."""

from __future__ import annotations

import os
import shutil


def haproxy() -> str | None:
    """Where HAProxy is installed, ``None`` when it is not."""
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )
