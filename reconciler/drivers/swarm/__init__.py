"""The swarm runtime: Docker Swarm services through a manager's Engine API."""

from reconciler.drivers.swarm.driver import SwarmDriver

__all__ = ["SwarmDriver"]
