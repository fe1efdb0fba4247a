"""Hosts files zlayer owns and workloads read as their ``/etc/hosts``.

Both runtimes bind-mount a file of zlayer's over a workload's ``/etc/hosts``, so the
names in it (a service whose internal endpoints the managed proxy serves resolves to
the proxy) change while the workload runs. A bind mount keeps showing the inode it
was made from, so these files are rewritten **in place** (same inode), never replaced
by a rename: a renamed-over file would leave running workloads reading the old entries
forever.

In place, but never empty: a workload resolves names while the file changes, and a
truncate-then-write left a moment in which a lookup found no entry at all (a request
by service name failed with "Temporary failure in name resolution" during a rolling
replace). The new text is written over the old in one write from offset 0, padded
with a comment line to the old length when it is shorter: no read sees an empty file
or a stale tail. A read that races the write itself may still see one line torn
between old and new (the kernel does not make a read atomic against a write), but a
line that is the same at the same place in both reads whole; entries are written in
address order, so the first one (the managed proxy's, the lowest address of a
deployment's network, which carries every proxied service's name) stays put.
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


def padded(data: bytes, length: int) -> bytes:
    """``data`` made at least ``length`` bytes long by a trailing comment line (a
    blank line when one byte is missing), so that writing it over a file of that
    length leaves no byte of the old text behind."""
    missing = length - len(data)
    if missing <= 0:
        return data
    return data + b"#" * (missing - 1) + b"\n"


def rewrite(path: Path, entries: Entries) -> Path:
    """Write ``entries`` to ``path`` in place (creating it, and its directory, when
    missing) and return ``path``; :class:`PermanentDriverError` when it cannot.

    A file that already holds exactly these entries is left alone: a deployment's
    files are rewritten on every create, start and remove in it, and rewriting
    (with its fsync) the ones that did not change made those O(n²) writes."""
    data = render(entries)
    try:
        with open(path, "rb") as current:
            if current.read() == padded(data, os.fstat(current.fileno()).st_size):
                return path
    except OSError:
        pass  # missing or unreadable: written below, which says what is wrong
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            text = padded(data, os.fstat(fd).st_size)
            view, offset = memoryview(text), 0
            while view[offset:]:
                offset += os.pwrite(fd, view[offset:], offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PermanentDriverError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
