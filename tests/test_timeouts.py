"""The suite's pytest-timeout set-up (pyproject.toml) stops a test whose asyncio event loop never yields."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SPINNING = '''
import asyncio

import pytest


async def spin():  # a coroutine that never gives the event loop a turn (an ASGI receive that never waits)
    async def receive():
        return {"type": "http.request"}

    while (await receive())["type"] != "http.disconnect":
        pass


@pytest.mark.timeout(1)
def test_spins():
    async def main():
        spinner = asyncio.ensure_future(spin())
        await asyncio.sleep(0.1)
        spinner.cancel()

    asyncio.run(main())
'''


def test_a_test_whose_event_loop_spins_in_a_task_fails_at_its_timeout(tmp_path):
    """With pytest-timeout's default method (a signal; its exception raised once, in the code that runs) the timeout
    landed in the spinning task, asyncio kept it as that task's result, and the test passed, late; a second spin
    was never stopped. The suite's method ends the test at its timeout."""
    (tmp_path / "test_spinning.py").write_text(SPINNING)
    run = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                          "-n", "0", "-p", "no:cacheprovider", "-q", str(tmp_path / "test_spinning.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr  # the thread method prints every thread's stack under "Timeout", then exits 1
    assert run.returncode != 0 and "Timeout" in output and "1 passed" not in output, (run.returncode, output[-3000:])
