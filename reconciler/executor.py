"""Carrying out plan actions through a driver.

:func:`perform` maps one action to the driver call for its kind. Running a
whole plan in dependency order under a concurrency limit, with health-gated
conditions, builds on it (see the apply command).
"""

from __future__ import annotations

from reconciler.desired import DesiredState
from reconciler.drivers.base import Driver
from reconciler.plan.model import Action


async def perform(driver: Driver, action: Action, desired: DesiredState) -> None:
    """Do what ``action`` says. Creates and replaces take the compiled service from
    ``desired``; everything else needs only the workload's identity."""
    target = action.target
    if action.kind in ("create", "replace", "register"):
        service = desired.services[(target.deployment, target.service)]
        if action.kind == "register":
            await driver.register(service, desired.revision)
        elif target.replica is None:
            raise ValueError(f"{action.id}: a {action.kind} needs a replica index")
        elif action.kind == "create":
            await driver.create(service, target.replica, desired.revision)
        else:
            await driver.replace(service, target.replica, desired.revision)
        return
    calls = {
        "start": driver.start,
        "restart": driver.restart,
        "stop": driver.stop,
        "remove": driver.remove,
        "prune": driver.remove,
        "unregister": driver.unregister,
    }
    await calls[action.kind](target)
