"""``moonwire test``: run a project's test entries on a node of its own.

Wippy keeps tests as entries with ``meta.type: test`` (its ``wippy/test`` module finds
them in the registry and calls each as a function, one at a time, with
``{pid, topic, ref_id}``). This command does the same without a runner process: it starts
a node exactly as ``moonwire run`` does (embedded NATS, and Temporal only when the
project has a ``temporal.client`` to embed), then runs each test in id order.

The verdict follows Wippy's runner (``runner.lua``/``runner_verdict.lua`` of
``wippyai/framework``): a test fails when it returns ``false``, returns an error
(``nil, err`` or ``false, reason``), or returns the result table of
``test.run_cases`` with ``status = "error"``; anything else it returns passes,
``nil`` included. Wippy counts a raise as a failure too; here it is an ERROR, as is a
test that outlives its timeout or cannot start, so a broken test stands apart from a
failing one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from moonwire.broker import BrokerUnavailable
from moonwire.lua import SECOND, MoonwireError, Outcome, SpawnRequest, parse_duration, settled

from .._loop import LoopUnavailable, run_on
from .._node import Node, NodeFailed
from ..processes import TERMINAL_HOST
from ..project import Entry, FunctionEntry, ProcessEntry, Project
from ..servers import EmbeddedServerError
from ..telemetry import MetricsUnavailable
from ..workflows import TemporalUnavailable
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, load

log = logging.getLogger("moonwire")

EXIT_NODE_FAILED = 3
"""The node could not start or failed while tests ran (pytest's 'internal error')."""
EXIT_NO_TESTS = 5
"""No test entry, or none matching ``-k`` (as pytest)."""

TEST_TOPIC = "test:update"
"""The topic Wippy's runner passes to a test; ``wippy.test``'s BDD library sends its case
events there when it also gets a ``pid`` (this runner passes none: it reads the
``run_cases`` result instead)."""

TERMINATE_WAIT = 5.0
"""Seconds to wait for a timed-out process test to exit once terminated."""

Status = Literal["PASS", "FAIL", "ERROR"]


@dataclass(frozen=True, slots=True)
class CaseResult:
    """How one test ended; ``reason`` is empty for a pass."""

    entry: str
    status: Status
    seconds: float
    reason: str = ""

    def line(self) -> str:
        if self.status == "PASS":
            return f"PASS {self.entry} ({self.seconds * 1000:.0f} ms)"
        return f"{self.status} {self.entry}: {self.reason}"


def is_test(entry: Entry) -> bool:
    """Whether ``entry`` is a test: ``meta.type: test``, as Wippy's runner selects them."""
    return entry.meta.get("type") == "test"


def find_tests(project: Project, patterns: Iterable[str] = ()) -> list[Entry]:
    """The test entries, by id; with ``patterns``, those whose id contains any of them."""
    wanted = [pattern for pattern in patterns if pattern]
    tests = [entry for entry in project.entries.values() if is_test(entry)]
    if wanted:
        tests = [entry for entry in tests if any(pattern in entry.id for pattern in wanted)]
    return sorted(tests, key=lambda entry: entry.id)


def verdict(outcome: Outcome) -> tuple[Status, str]:
    """PASS, FAIL or ERROR with a reason, for how a test ended (see the module's doc)."""
    if outcome.error is not None:
        error = outcome.error
        text = f"{error.kind}: {error.message}" if error.kind else error.message
        return ("ERROR" if outcome.raised else "FAIL"), _one_line(text)
    value = outcome.value
    if value is False:
        return "FAIL", "returned false"
    if isinstance(value, dict) and value.get("status") == "error":
        return "FAIL", _run_cases_failure(value)
    return "PASS", ""


def _run_cases_failure(result: dict[str, Any]) -> str:
    """The reason from ``wippy.test``'s ``run_cases`` result: how many cases failed, and the first."""
    failed, total = result.get("failed_tests"), result.get("total_tests")
    head = f"{failed} of {total} cases failed" if failed is not None and total is not None else "returned status error"
    suites = result.get("test_suites")
    for suite in (suites.values() if isinstance(suites, dict) else []):
        for case in (suite.get("tests") or []) if isinstance(suite, dict) else []:
            if isinstance(case, dict) and case.get("status") == "fail":
                return _one_line(f"{head}; first: {suite.get('name')} > {case.get('name')}: {case.get('error')}")
    return head


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip()) or "(no message)"


def timeout_of(entry: Entry, default: float) -> float:
    """``meta.timeout`` of the entry (Wippy's per-test setting, a duration), else ``default``.

    Raises:
        ValueError: ``meta.timeout`` is not a duration.
    """
    value = entry.meta.get("timeout")
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"meta.timeout must be a duration such as '30s', got {value!r}")
    seconds = parse_duration(value) / SECOND
    if seconds <= 0:
        raise ValueError(f"meta.timeout must be positive, got {value!r}")
    return seconds


async def run_test(node: Node, entry: Entry, timeout: float) -> CaseResult:
    """Run one test entry to its end, or until ``timeout`` seconds have passed."""
    assert node.runtime is not None
    args = [{"ref_id": entry.id, "topic": TEST_TOPIC}]
    started = time.monotonic()

    def result(status: Status, reason: str = "") -> CaseResult:
        return CaseResult(entry.id, status, time.monotonic() - started, reason)

    if isinstance(entry, FunctionEntry):
        try:
            # Cancelling the wait cancels the call: the unit ends and its worker goes back.
            async with asyncio.timeout(timeout):
                outcome = await settled(node.runtime.functions.call(None, entry.id, args, {}, {}))
        except TimeoutError:
            return result("ERROR", f"timed out after {_seconds(timeout)}")
        return result(*verdict(outcome))
    if isinstance(entry, ProcessEntry):
        return await _run_process_test(node, entry, args, timeout, result)
    return result("ERROR", f"a {entry.kind} cannot be a test: meta.type test marks a function.lua "
                           f"(or a process.lua) entry")


async def _run_process_test(node: Node, entry: ProcessEntry, args: list[Any], timeout: float,
                            result: Callable[..., CaseResult]) -> CaseResult:
    """A process test: spawned on the terminal host, as ``run -x`` does, so that one that
    outlives its timeout can be terminated by its PID."""
    assert node.runtime is not None
    processes = node.runtime.processes
    exited: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def on_exit(outcome: Outcome) -> None:
        if not exited.done():
            exited.set_result(outcome)

    answer = processes.start_here(SpawnRequest(entry.id, TERMINAL_HOST, args), "", on_exit=on_exit)
    spawned = await settled(answer)
    if not spawned.ok:
        assert spawned.error is not None
        return result("ERROR", _one_line(f"could not start: {spawned.error.message}"))
    try:
        async with asyncio.timeout(timeout):
            outcome = await asyncio.shield(exited)
    except TimeoutError:
        processes.terminate(None, str(spawned.value))
        try:
            async with asyncio.timeout(TERMINATE_WAIT):
                await exited
        except TimeoutError:
            log.warning("test process %s did not exit %.0f s after it was terminated", spawned.value,
                        TERMINATE_WAIT)
        return result("ERROR", f"timed out after {_seconds(timeout)}")
    # An EXIT does not say whether the process raised or returned its error: both FAIL.
    return result(*verdict(outcome))


def _seconds(value: float) -> str:
    return f"{value:g} s"


async def run_tests(node: Node, tests: list[Entry], default_timeout: float) -> list[CaseResult]:
    """Run ``tests`` one at a time on a running node, printing a line for each as it ends."""
    results = []
    for entry in tests:
        try:
            timeout = timeout_of(entry, default_timeout)
        except ValueError as err:
            outcome = CaseResult(entry.id, "ERROR", 0.0, str(err))
        else:
            outcome = await run_test(node, entry, timeout)
        results.append(outcome)
        print(outcome.line(), flush=True)
    return results


def summary(results: list[CaseResult]) -> str:
    """``N passed, N failed`` and ``, N errors`` when there are any."""
    passed = sum(result.status == "PASS" for result in results)
    failed = sum(result.status == "FAIL" for result in results)
    errors = sum(result.status == "ERROR" for result in results)
    return f"{passed} passed, {failed} failed" + (f", {errors} errors" if errors else "")


def cmd_test(args: argparse.Namespace) -> int:
    # stdout is the report: the node's INFO lines stay away unless -v (Lua's own output stays).
    loaded = load(args, quiet=True)
    if isinstance(loaded, int):
        return loaded
    resolved, project = loaded
    try:
        default_timeout = parse_duration(args.timeout) / SECOND
    except ValueError as err:
        print(f"error: --timeout {args.timeout}: {err}", file=sys.stderr)
        return EXIT_USAGE
    if default_timeout <= 0:
        print(f"error: --timeout {args.timeout}: must be positive", file=sys.stderr)
        return EXIT_USAGE
    tests = find_tests(project, args.keyword)
    if not tests:
        matching = f" matching -k {' or '.join(args.keyword)}" if args.keyword else ""
        print(f"no tests found{matching} (entries with meta.type: test)")
        return EXIT_NO_TESTS
    node = Node(resolved, project)

    async def main() -> list[CaseResult]:
        async with node.running():
            return await run_tests(node, tests, default_timeout)

    try:
        results = run_on(node.config.loop, main())
    except (BrokerUnavailable, EmbeddedServerError, TemporalUnavailable, NodeFailed, MetricsUnavailable,
            LoopUnavailable) as err:
        log.error("%s", err)
        return EXIT_NODE_FAILED
    except MoonwireError as err:
        log.error("%s", err.message)
        return EXIT_NODE_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    print(summary(results), flush=True)
    return EXIT_OK if all(result.status == "PASS" for result in results) else EXIT_FAILURE
