"""The test suite's own machinery can fail: the wait and skip-or-fail helpers, the
markers tests/conftest.py sets, and the fixture that fails a test leaking asyncio
tasks (run on tiny test files through ``pytester``)."""

from __future__ import annotations

import itertools

import pytest

from tests.support import unavailable, wait_for, wait_for_async

pytest_plugins = ["pytester"]

CONFTEST = """
from tests.conftest import _asyncio_tasks_left, _no_leaked_tasks, pytest_collection_modifyitems
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A directory for tiny test files with this suite's conftest machinery."""
    pytester.makeconftest(CONFTEST)
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        markers =
            docker: docker
            root: root
            leaks_tasks: known leak
        """
    )
    return pytester


def test_a_task_left_running_fails_the_test_that_started_it(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import asyncio

        async def test_leaks():
            asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="leaked-sleeper")

        async def test_awaits_its_task():
            await asyncio.create_task(asyncio.sleep(0))

        async def test_a_task_about_to_end_is_given_its_chance():
            asyncio.create_task(asyncio.sleep(0))

        def test_sync():
            pass
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "*1 asyncio task(s) left running by the test:*",
            "*leaked-sleeper*",
        ]
    )


def test_a_task_a_fixture_leaves_fails_too(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.fixture
        async def background():
            yield asyncio.create_task(asyncio.Event().wait(), name="forgotten-watcher")

        async def test_uses_it(background):
            assert not background.done()
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*forgotten-watcher*"])


def test_a_known_leak_must_still_leak(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import asyncio
        import pytest

        @pytest.mark.leaks_tasks("bug 1")
        async def test_still_leaks():
            asyncio.create_task(asyncio.sleep(3600))

        @pytest.mark.leaks_tasks("bug 2")
        async def test_fixed():
            pass
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_fixed*", "*remove the mark*bug 2*"])


def test_needs_root_refuses_a_test_not_marked_root(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        from tests.support import needs_root

        def hidden():
            needs_root("something")

        def test_direct():
            needs_root("something")

        def test_through_a_helper():
            hidden()
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider", "-rA")
    result.stdout.fnmatch_lines(["*test_through_a_helper*is not marked 'root'*"])
    marked = suite.runpytest("-p", "no:cacheprovider", "-m", "root", "--collect-only", "-q")
    marked.stdout.fnmatch_lines(["*::test_direct", "1/2 tests collected (1 deselected)*"])


def test_docker_fixtures_mark_their_tests_docker(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.fixture
        def docker_url():
            return "unix:///nonexistent"

        @pytest.fixture
        def engine(docker_url):
            return docker_url

        def test_through_another_fixture(engine):
            pass

        def test_without():
            pass
        """
    )
    result = suite.runpytest("-p", "no:cacheprovider", "-m", "docker", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::test_through_another_fixture", "1/2 tests collected*"])


def test_wait_for_gives_the_first_truthy_value_or_names_what_it_waited_for() -> None:
    counter = itertools.count()
    assert wait_for(lambda: next(counter) >= 3 and "done", "three calls", 5, interval=0) == "done"
    with pytest.raises(AssertionError, match=r"waited 0\.1s in vain for nothing \(said no\)"):
        wait_for(lambda: None, lambda: "nothing (said no)", 0.1, interval=0.01)


async def test_wait_for_async_takes_coroutines_and_plain_checks() -> None:
    counter = itertools.count()

    async def third() -> int:
        return next(counter) >= 2

    assert await wait_for_async(third, "two calls", 5, interval=0) is True
    assert await wait_for_async(lambda: 7, "a value", 5) == 7
    with pytest.raises(AssertionError, match=r"waited 0\.1s in vain for Godot"):
        await wait_for_async(lambda: 0, "Godot", 0.1, interval=0.01)


def test_unavailable_skips_saying_why_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no frobnicator here"):
        unavailable("no frobnicator here")
    assert "SKIPPED: no frobnicator here" in capsys.readouterr().out
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no frobnicator here \(CI=true: failing"):
        unavailable("no frobnicator here")
