"""The state directory and what commands read from it: the secrets and their hash key.

Planning changes nothing on the host. The key for keyed secret hashes is created by
the first command that records secrets on a host (``apply``); until then there is
nothing recorded to compare with, so ``plan`` uses a throwaway key and writes
nothing. Once a state directory exists, ``plan`` may add an entry to its compile
cache (:mod:`reconciler.compile_cache`), which only saves the next compile; it never
creates the directory.
"""

from __future__ import annotations

import json
import os
import secrets as random
import stat
from pathlib import Path

from reconciler.errors import SourceError
from reconciler.settings import default_state_dir as settings_default_state_dir
from reconciler.settings import load_settings
from reconciler.spec.refs import SECRET_NAME_RE
from reconciler.spec.yamldoc import format_bytes

KEY_FILE = "secret.key"

MAX_SECRET_BYTES = 64 * 1024
"""Largest secret file read (64 KiB): keys, passwords and certificates are far
smaller, and a value this size already strains an environment (Linux allows 128 KiB
per variable)."""


def default_state_dir() -> Path:
    """The state directory in effect: ``state_dir`` of the config file, else
    :func:`reconciler.settings.default_state_dir`."""
    return load_settings().state_dir or settings_default_state_dir()


def read_secret_key(state_dir: Path) -> bytes:
    try:
        return (state_dir / KEY_FILE).read_bytes()
    except FileNotFoundError:
        return random.token_bytes(32)


class SecretsDir:
    """Secrets as files: ``<dir>/<file>`` holds the value (one trailing newline
    dropped). A key is what :meth:`reconciler.spec.refs.SecretRef.key` gives: a
    ``/``-separated file path, and ``#FIELD`` for one field of a JSON object."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, key: str) -> str | None:
        """The secret's value; None when there is no such file (or no such field).
        Raises :class:`SourceError` for a file that is no secret: unreadable, not a
        regular file (a device or FIFO: ``/dev/zero`` never ends, a FIFO may never
        answer), larger than :data:`MAX_SECRET_BYTES`, not UTF-8 or holding a NUL
        byte; and, for a field, a file that is not a JSON object."""
        file, _, field = key.partition("#")
        parts = file.split("/")
        if not all(SECRET_NAME_RE.fullmatch(part) for part in parts):
            return None
        text = self._read(file, self.path.joinpath(*parts))
        if text is None or not field:
            return text
        return _json_field(file, text, field)

    def _read(self, name: str, path: Path) -> str | None:
        try:
            data = _read_small_file(path, MAX_SECRET_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise SourceError(f"secret {name}: cannot read {path}: {exc.strerror or exc}") from exc
        if data is None:
            raise SourceError(
                f"secret {name}: cannot read {path}: not a regular file (a directory, "
                "device or FIFO)"
            )
        if len(data) > MAX_SECRET_BYTES:
            raise SourceError(
                f"secret {name}: cannot read {path}: larger than "
                f"{format_bytes(MAX_SECRET_BYTES)}, too large for a secret"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(f"secret {name}: cannot read {path}: not UTF-8 text") from exc
        if "\0" in text:
            raise SourceError(
                f"secret {name}: cannot read {path}: it holds a NUL byte, which no process receives"
            )
        return text.removesuffix("\n")


def _json_field(name: str, text: str, field: str) -> str | None:
    """Field ``field`` of the JSON object ``text``, as ZLayer gives it: a string as it
    is, a number or boolean as JSON writes it, null as an empty string, an array or
    object as JSON; None when the object has no such field."""
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SourceError(
            f"secret {name}: a reference to its field {field!r} needs a JSON object in "
            "the file, and it holds none"
        )
    if field not in document:
        return None
    value = document[field]
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _read_small_file(path: Path, limit: int) -> bytes | None:
    """At most ``limit + 1`` bytes of the regular file ``path`` (symlinks followed);
    None when it is something else. Opened without blocking, so a FIFO cannot hang."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def ensure_secret_key(state_dir: Path) -> bytes:
    """The host's key for keyed secret hashes, created (0600) by the first apply."""
    path = state_dir / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = random.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return key
