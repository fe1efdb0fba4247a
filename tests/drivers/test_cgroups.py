"""Resource limits of the process runtime through the host's real cgroups (root)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from reconciler.drivers.process import ProcessDriver, cgroups
from reconciler.observed import WorkloadId
from tests.docker_support import compile_services
from tests.support import needs_root

pytest_plugins = ["tests.process_support"]

LIMITED = """
app:
  image: {name: none}
  command: {entrypoint: [sleep, "600"]}
  resources: {memory: 64Mi, cpu: 0.5, pids_limit: 50}
"""


def test_limits_in_the_form_the_kernel_takes() -> None:
    assert cgroups.wanted({"memory": "64Mi", "cpu": 0.5, "pids_limit": 50}) == {
        "memory": str(64 * 1024**2),
        "cpu": "50000",
        "pids": "50",
    }
    assert cgroups.wanted({"cpuset": "0"}) == {}
    assert cgroups.memory_bytes("2Gi") == 2 * 1024**3


def test_a_host_without_writable_controllers_says_why(tmp_path: Path) -> None:
    needs_root("the cgroup hierarchy checks (they come after the root check)")
    layout, problem = cgroups.detect(tmp_path)
    assert layout is None
    assert problem == f"no writable cgroup v1 memory hierarchy at {tmp_path / 'memory'}"


async def test_a_replica_runs_inside_its_limits_and_its_groups_go_with_it(
    process_state: Path, process_deployment: str
) -> None:
    needs_root("cgroup limits")
    layout, problem = cgroups.detect()
    assert layout is not None, f"this host's cgroups cannot be used: {problem}"
    service = compile_services(process_deployment, LIMITED)["app"]
    target = WorkloadId(process_deployment, "app", 1)
    async with ProcessDriver(process_state) as driver:
        assert driver.facts.cgroups is None
        assert not [w for w in driver.limits(service).warnings if "resources" in w]
        await driver.create(service, 1, "rev-1")
        leaf = process_state / "process/deployments" / process_deployment / "services/app/1"
        pid = json.loads((leaf / "run.json").read_text())["pid"]
        name = cgroups.group_name(process_deployment, "app", 1)
        groups = Path(f"/proc/{pid}/cgroup").read_text()
        dirs = {layout.roots[c] / cgroups.GROUP / name for c in cgroups.CONTROLLERS}
        for directory in dirs:
            assert str(pid) in (directory / "cgroup.procs").read_text().split()
        assert f"/{cgroups.GROUP}/{name}" in groups
        if layout.version == 1:
            memory = layout.roots["memory"] / cgroups.GROUP / name
            assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024**2)
            cpu = layout.roots["cpu"] / cgroups.GROUP / name
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        else:
            group = layout.roots["memory"] / cgroups.GROUP / name
            assert (group / "memory.max").read_text().strip() == str(64 * 1024**2)
            assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        pids = layout.roots["pids"] / cgroups.GROUP / name
        assert (pids / "pids.max").read_text().strip() == "50"
        await driver.remove(target)
        await asyncio.sleep(0)
        assert not [d for d in dirs if d.exists()]
