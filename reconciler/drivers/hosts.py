"""Hosts files zlayer owns and workloads read as their ``/etc/hosts``.

Both runtimes bind-mount a file of zlayer's over a workload's ``/etc/hosts``, so the
names in it (a service whose internal endpoints the managed proxy serves resolves to
the proxy) change while the workload runs. A bind mount keeps showing the inode it
was made from, so these files are rewritten **in place** (truncated, written,
fsynced; same inode), never replaced by a rename: a renamed-over file would leave
running workloads reading the old entries forever.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

from reconciler.errors import PermanentDriverError

Entries = Sequence[tuple[str, Sequence[str]]]
"""``(address, names)`` lines, in order."""

LOCALHOST = ("127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback")


def render(entries: Entries) -> bytes:
    """The file: the ``localhost`` lines, then one line per ``(address, names)``.

    Raises :class:`ValueError` for what is not an address or not a host name."""
    lines = list(LOCALHOST)
    for address, names in entries:
        ip_address(address)  # raises ValueError for what is not an address
        if not names:
            raise ValueError(f"hosts entry for {address} has no names")
        for name in names:
            if not name or any(c.isspace() or c == "#" for c in name):
                raise ValueError(f"not a host name for a hosts file: {name!r}")
        lines.append(f"{address} {' '.join(names)}")
    return ("\n".join(lines) + "\n").encode()


def rewrite(path: Path, entries: Entries) -> Path:
    """Write ``entries`` to ``path`` in place (creating it, and its directory, when
    missing) and return ``path``; :class:`PermanentDriverError` when it cannot.

    A file that already holds exactly these entries is left alone: a deployment's
    files are rewritten on every create, start and remove in it, and rewriting
    (with its fsync) the ones that did not change made those O(n²) writes."""
    data = render(entries)
    try:
        with open(path, "rb") as current:
            if current.read(len(data) + 1) == data:
                return path
    except OSError:
        pass  # missing or unreadable: written below, which says what is wrong
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PermanentDriverError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
