"""The autouse leak guard fails tests that leak threads, processes or asyncio tasks.

The inner tests run in a pytest subprocess (pytester) whose conftest imports the guard
from this suite's conftest, so a deliberate leak cannot disturb this process.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

INNER_CONFTEST = f"""
import importlib.util

_spec = importlib.util.spec_from_file_location("puhui_suite_conftest", {str(CONFTEST)!r})
_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_suite)
globals().update({{name: getattr(_suite, name) for name in _suite.LEAK_GUARD_NAMES}})
# Short grace periods: the guard waits them out for every deliberate leak below.
_suite.THREAD_GRACE = _suite.PROCESS_GRACE = _suite.TASK_GRACE = 0.5
"""

INNER_TESTS = """
import asyncio
import subprocess
import sys
import threading

import pytest

never = threading.Event()


def test_leaks_thread():
    threading.Thread(target=never.wait, name="leaky-thread", daemon=True).start()


def test_thread_finishing_after_the_test_is_fine():
    go = threading.Event()
    threading.Thread(target=go.wait, name="finishing-thread").start()
    go.set()  # not joined: the guard's grace period covers it


def test_leaks_process():
    subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                     stdin=subprocess.PIPE)


def test_waited_process_is_fine():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_session_server_is_not_a_leak(mosquitto):
    assert mosquitto.running


async def test_leaks_task():
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="leaky-task")


async def test_awaited_and_cancelled_tasks_are_fine():
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    hanging = asyncio.create_task(asyncio.Event().wait())
    hanging.cancel()  # cancelled but not awaited: finishes within the grace period


@pytest.mark.asyncio(loop_scope="module")
async def test_leaks_task_in_module_loop():
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="module-leak")


@pytest.mark.asyncio(loop_scope="module")
async def test_executor_thread_of_module_loop_is_fine():
    await asyncio.to_thread(lambda: None)


def test_sync_test_is_not_task_guarded():
    pass
"""


def test_guard_fails_each_kind_of_leak_and_names_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        asyncio_default_test_loop_scope = function
        """
    )
    pytester.makepyfile(test_inner=textwrap.dedent(INNER_TESTS))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "-q", timeout=120)
    output = result.stdout.str()

    outcomes: dict[str, set[str]] = {}  # a test can both pass and error at teardown
    for match in re.finditer(r"^(PASSED|FAILED|ERROR) test_inner\.py::(\w+)", output, re.M):
        outcomes.setdefault(match[2], set()).add(match[1])
    leaky = {
        "test_leaks_thread",
        "test_leaks_process",
        "test_leaks_task",
        "test_leaks_task_in_module_loop",
    }
    assert len(outcomes) == 10, output
    for name, seen in outcomes.items():
        expected = "ERROR" if name in leaky else "PASSED"
        assert expected in seen and "FAILED" not in seen, f"{name}: {seen}\n{output}"
        assert name in leaky or seen == {"PASSED"}, f"{name} flagged wrongly:\n{output}"

    assert "leaked 1 thread(s): 'leaky-thread'" in output
    assert re.search(r"leaked 1 child process\(es\), killed: pid \d+ .*sys\.stdin\.read", output)
    assert "leaked 1 asyncio task(s): 'leaky-task'" in output
    assert "leaked 1 asyncio task(s): 'module-leak'" in output
