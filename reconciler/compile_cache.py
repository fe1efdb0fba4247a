"""The compile cache: an unchanged spec set skips YAML parsing and the spec models.

A converged ``zlayer apply`` or ``plan`` compiles the same files again and again;
building the pydantic models and parsing the YAML is most of what it costs. So the
compiled :class:`~reconciler.desired.DesiredState` is kept in the state directory
(``compile-cache/``, one entry per set of file names and compile mode) and reused
while everything that decides it is unchanged.

**Key.** An entry answers only for the same *material*: this cache's format,
zlayer's version and the size and modification time of the compiler's own source
files (an edited checkout is another compiler), the compile mode (keyed or offline,
secrets readable or not) and every spec file, by name and SHA-256 of its bytes, in
order. The host key enters too: the entry is sealed with keys derived from the
material and the host key, so another key or other files simply do not open it.
What the environment and the secrets contribute is checked after opening: every
``$E:`` variable and ``$S:`` secret the specs use is resolved again and its keyed
hash compared with the one in the compiled config; any difference, or one unset,
and the specs are compiled afresh (which reports the problem with its file:line:col).

**Trust.** An entry is ``MAGIC | nonce | ciphertext | tag``, the tag an HMAC-SHA256
over the rest, the ciphertext the body (JSON, deflated) encrypted. A file that is
truncated, garbage, written by another version or for other inputs, or holds a body
of the wrong shape is ignored and replaced by the next successful compile; it is
never partly used. Specs with problems are never stored,
so their problems are reported every time.

**Secrets.** No ``$E:`` or ``$S:`` value is stored, in clear or otherwise: the
entry records where each one goes and by which name, and the value is resolved
after opening (see above). Sensitive *literals* (a password written in a spec, a
URL with userinfo, a marked value) and the health checks and init steps, which may
hold them, are in the body, which is encrypted (a SHAKE-256 key stream) under a key
derived from the spec files' own bytes and the host key: only someone who has the
specs, which hold those literals in clear anyway, and the key can read them.

Settings and the runtime do not enter compiling (what a runtime can run is checked
after it, on every run), so they are not part of the key.

**Writes** are atomic (a 0600 temporary file renamed into place) and only into a
state directory that exists: the cache never creates one (``plan`` on a fresh host
leaves no trace). A write that fails (a read-only state directory) is skipped
silently: the cache only ever saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets as random
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import __version__
from reconciler.desired import CompileInputs, DesiredState
from reconciler.desired_data import Foreign, decode_state, encode_state
from reconciler.fingerprint import canonical_json
from reconciler.sources.files import Collected
from reconciler.statedir import KEY_FILE

CACHE_DIR = "compile-cache"
MAGIC = b"zlayer-compile-cache 1\n"
NONCE_BYTES = 16
TAG_BYTES = 32
MAX_ENTRY_BYTES = 256 * 1024 * 1024
"""Largest entry read, and largest body it inflates to; a larger one is no entry."""
MAX_ENTRIES = 8
"""Entries kept (one per set of spec file names and mode); the oldest go first."""

_COMPILER_SOURCES = (
    "spec",
    "autoscale.py",
    "compile_cache.py",
    "desired.py",
    "desired_data.py",
    "fingerprint.py",
    "graph.py",
    "policy.py",
    "redact.py",
    "schedule.py",
)
"""The parts of the package whose code decides what compiling gives (under reconciler/)."""


# --- the entry file ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry: its file (by mode and spec file names) and the keys that open it
    (from the material and the host key, see the module docstring)."""

    path: Path
    seal_key: bytes
    mac_key: bytes

    @staticmethod
    def locate(collected: Collected, inputs: CompileInputs, state_dir: Path | None) -> Entry | None:
        if state_dir is None or collected.problems or not collected.files:
            return None
        if inputs.secret_key is not None and not _is_host_key(state_dir, inputs.secret_key):
            return None
        mode = [
            "keyed" if inputs.secret_key is not None else "offline",
            "secrets" if inputs.secret is not None else "no-secrets",
        ]
        names = [f.name for f in collected.files]
        digests = [hashlib.sha256(f.data).hexdigest() for f in collected.files]
        material = hashlib.sha256(
            canonical_json(
                [MAGIC.decode(), __version__, _code_identity(), mode, names, digests]
            ).encode()
        ).digest()
        host = inputs.secret_key or b""
        slot = hashlib.sha256(canonical_json([mode, names]).encode()).hexdigest()[:24]
        return Entry(
            path=state_dir / CACHE_DIR / f"{slot}.entry",
            seal_key=hmac.digest(host, b"seal\0" + material, "sha256"),
            mac_key=hmac.digest(host, b"mac\0" + material, "sha256"),
        )

    def read(self, inputs: CompileInputs, revision: str) -> DesiredState | None:
        """The cached state, its secrets resolved from ``inputs``; None when the entry
        is missing, foreign, damaged, or the environment or secrets moved."""
        raw = _read_regular(self.path)
        if raw is None:
            return None
        try:
            return decode_state(self.open(raw), inputs, revision)
        except (ValueError, KeyError, TypeError, IndexError, RecursionError, zlib.error):
            return None

    def write(self, desired: DesiredState) -> None:
        try:
            data = encode_state(desired)
        except Foreign:
            return  # something this format cannot hold: compile every time
        self.write_data(data)

    def write_data(self, data: Any) -> None:
        """Seal JSON ``data`` as this entry (tests forge bodies of other shapes with it)."""
        plain = zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 1)
        nonce = random.token_bytes(NONCE_BYTES)
        body = MAGIC + nonce + _xor(plain, _stream(self.seal_key, nonce, len(plain)))
        _write_atomic(self.path, body + hmac.digest(self.mac_key, body, "sha256"))

    def open(self, raw: bytes) -> Any:
        """The JSON data sealed in ``raw``; raises ``Foreign`` for anything else."""
        head = len(MAGIC) + NONCE_BYTES
        if len(raw) < head + TAG_BYTES or not raw.startswith(MAGIC):
            raise Foreign("not an entry")
        body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if not hmac.compare_digest(tag, hmac.digest(self.mac_key, body, "sha256")):
            raise Foreign("another version, other specs, inputs or key, or damaged")
        nonce, sealed = body[len(MAGIC) : head], body[head:]
        inflate = zlib.decompressobj()
        plain = inflate.decompress(
            _xor(sealed, _stream(self.seal_key, nonce, len(sealed))), MAX_ENTRY_BYTES
        )
        if inflate.unconsumed_tail or not inflate.eof:
            raise Foreign("the body does not inflate within the limit")
        return json.loads(plain)


def _is_host_key(state_dir: Path, key: bytes) -> bool:
    try:
        return hmac.compare_digest((state_dir / KEY_FILE).read_bytes(), key)
    except OSError:
        return False


def _code_identity() -> list[Any]:
    root = Path(__file__).parent
    found: list[Any] = []
    for name in _COMPILER_SOURCES:
        try:
            paths = sorted((root / name).glob("*.py")) if name == "spec" else [root / name]
            for path in paths:
                info = path.stat()
                found.append([path.name, info.st_size, info.st_mtime_ns])
        except OSError:
            found.append([name, None])
    return found


def _stream(key: bytes, nonce: bytes, size: int) -> bytes:
    return hashlib.shake_256(key + nonce).digest(size) if size else b""


def _xor(data: bytes, stream: bytes) -> bytes:
    size = len(data)
    value = int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")
    return value.to_bytes(size, "little")


def _read_regular(path: Path) -> bytes | None:
    """The file's bytes when it is a regular file of a sane size (never blocks on a
    FIFO, never follows a symlink); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_ENTRY_BYTES:
            return None
        chunks: list[bytes] = []
        left = MAX_ENTRY_BYTES + 1
        while left > 0 and (chunk := os.read(fd, min(left, info.st_size + 1 or 1))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` as ``path`` (0600), by a rename: readers see the old entry or the new.
    Not synced: an entry torn by a crash fails its tag and is written again."""
    if not path.parent.parent.is_dir():
        return  # no state directory: the cache does not create one
    tmp = path.with_name(f".{path.name}.{random.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _prune(path.parent, keep=path.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _prune(directory: Path, keep: str) -> None:
    """At most :data:`MAX_ENTRIES` entries with ``keep`` among them, the newest kept."""
    entries = [p for p in directory.iterdir() if p.name != keep]
    if len(entries) < MAX_ENTRIES:
        return
    entries.sort(key=lambda p: p.stat().st_mtime_ns)
    for old in entries[: len(entries) - MAX_ENTRIES + 1]:
        old.unlink(missing_ok=True)
