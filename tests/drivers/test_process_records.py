"""The process driver with a corrupt record in its state directory: observe skips it
with a warning naming the file, and actions on it fail with that message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reconciler.drivers.process import ProcessDriver, records
from reconciler.errors import PermanentDriverError
from reconciler.observed import WorkloadId
from tests.docker_support import compile_services

JOB = """
app:
  rtype: job
  image: {name: none}
  command: {entrypoint: ["true"]}
"""


async def test_a_corrupt_record_is_skipped_by_observe_and_named_by_actions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    services = compile_services("recs", JOB)
    async with ProcessDriver(tmp_path, isolation=False) as driver:
        await driver.register(services["app"], "r1")
        corrupt = driver.store.replica_dir(WorkloadId("recs", "app", 1))
        corrupt.mkdir(parents=True)
        (corrupt / records.RECORD).write_text('{"deployment": "recs", "service": ')
        with caplog.at_level(logging.WARNING):
            observed = await driver.observe()
        assert [(w.service, w.replica, w.status) for w in observed.workloads] == [
            ("app", None, "registered")
        ]
        message = f"{corrupt / records.RECORD}: not a valid record: not JSON"
        assert message in caplog.text
        for action in (driver.stop, driver.remove, driver.status):
            with pytest.raises(PermanentDriverError, match=message):
                await action(WorkloadId("recs", "app", 1))
        assert (corrupt / records.RECORD).exists()  # reported, never guessed at
