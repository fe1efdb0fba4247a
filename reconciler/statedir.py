"""The state directory and what commands read from it: the secrets and their hash key.

Planning only reads. The key for keyed secret hashes is created by the first
command that records secrets on a host (``apply``); until then there is nothing
recorded to compare with, so ``plan`` uses a throwaway key and writes nothing.
"""

from __future__ import annotations

import os
import secrets as random
from pathlib import Path

from reconciler.desired import SECRET_NAME_RE
from reconciler.errors import SourceError
from reconciler.settings import default_state_dir as settings_default_state_dir
from reconciler.settings import load_settings

KEY_FILE = "secret.key"


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
    """Secrets as files: ``<dir>/<name>`` holds the value (one trailing newline dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, name: str) -> str | None:
        if not SECRET_NAME_RE.fullmatch(name):
            return None
        path = self.path / name
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"secret {name}: cannot read {path}: {exc}") from exc
        return text.removesuffix("\n")


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
