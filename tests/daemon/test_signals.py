"""The daemon's signals are its own: a forked helper's SIGTERM does not stop it.

pyroute2 forks a helper process to enter a network namespace and ends it with
SIGTERM. The child inherits asyncio's signal wakeup socket; without
``handle_signals``' fork hook, the helper's SIGTERM arrived at the daemon's loop
as the daemon's own, and the daemon stopped (seen in CI, about one run in three).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from reconciler.daemon.loop import STOP_SIGNALS, handle_signals
from tests.support import wait_for_async


async def test_a_forked_childs_sigterm_does_not_reach_the_daemon() -> None:
    loop = asyncio.get_running_loop()
    stopped: list[str] = []
    reloads: list[bool] = []
    handle_signals(loop, stopped.append, lambda: reloads.append(True))
    try:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the helper: say it runs, then wait to be ended
            os.write(ready_w, b"x")
            time.sleep(60)
            os._exit(0)
        os.close(ready_w)
        assert await asyncio.to_thread(os.read, ready_r, 1) == b"x"
        os.close(ready_r)
        os.kill(pid, signal.SIGTERM)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        # A signal of our own goes through the same wakeup socket after anything the
        # child wrote there: once it has been handled, so would the child's have been.
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for_async(lambda: reloads, "the daemon's own SIGHUP to be handled")
        assert stopped == []
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_for_async(lambda: stopped, "the daemon's own SIGTERM to be handled")
        assert stopped == ["SIGTERM"]
    finally:
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)
