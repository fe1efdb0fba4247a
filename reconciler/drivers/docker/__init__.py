"""The Docker runtime: replicas as containers on one Docker engine.

``from reconciler.drivers.docker import DockerDriver`` is the way in. The package
imports aiodocker only when :class:`DockerDriver` is first asked for, so the pure
translations (:mod:`.config` and its siblings) can be used without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.drivers.docker.driver import DockerDriver

__all__ = ["DockerDriver"]


def __getattr__(name: str) -> object:
    if name == "DockerDriver":
        from reconciler.drivers.docker.driver import DockerDriver

        return DockerDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
