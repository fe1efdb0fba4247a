"""The process runtime: replicas as supervised host processes, no container engine.

``from reconciler.drivers.process import ProcessDriver`` is the way in. Importing the
package itself loads nothing else: the monitor (:mod:`.monitor`), started as
``python -m reconciler.drivers.process.monitor`` for every replica, must stay cheap
to import, and Python imports this package before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.drivers.process.driver import ProcessDriver

__all__ = ["ProcessDriver"]


def __getattr__(name: str) -> object:
    if name == "ProcessDriver":
        from reconciler.drivers.process.driver import ProcessDriver

        return ProcessDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
