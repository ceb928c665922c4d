"""Lua states for workflow runs, reused from one run to the next.

Building a state (compiling and running the core, the prelude and every module) was
most of what a short Lua workflow cost its worker beyond what the same workflow written
against temporalio costs: about 5 ms of CPU per run, per replay too, while the rest of
moonwire's work for a one-activity workflow is under 1 ms. A run now takes a state that
an ended run gave back, when there is one:

* what a run made lives in its own instance's environment, as for processes sharing a
  state (``lua/_state.py``), so the next run sees none of it; the state's clock, random
  source and ``math.random`` seed are the new run's and its preemption count starts at
  0 (:meth:`LuaState.rebind`), exactly as a new state's would, so a run replays the
  same on a reused state or a new one;
* only a run that ended whole gives its state back: its unit ended (every thread
  killed), nothing was refused (``os.clock``), memory never ran out, and the state is
  small (after a full collection, if it was not). A run evicted mid-way drops its state;
* at most ``idle`` states wait at once; past that a returned state is dropped.

Runs take and return states from the SDK's workflow threads (one activation at a time
per run, several runs at once), hence the lock.
"""

from __future__ import annotations

import threading

from moonwire.lua import Limits, LuaState, Replay

IDLE_STATES = 64
"""States kept for the next runs (each about 0.6 MiB)."""
RETAINED_BYTES = 4 * 1024 * 1024
"""A returned state holding more than this after a full collection is dropped."""


class WorkflowStates:
    """The idle workflow states of one worker (see the module)."""

    def __init__(self, idle: int = IDLE_STATES) -> None:
        self.idle = idle
        self._states: dict[Limits, list[LuaState]] = {}
        self._lock = threading.Lock()
        self.built = 0
        """States built so far (the rest of the runs reused one)."""

    def take(self, limits: Limits, replay: Replay) -> LuaState:
        """A state for a new run (or replay) with ``limits``, bound to ``replay``."""
        with self._lock:
            free = self._states.get(limits)
            state = free.pop() if free else None
            if state is None:
                self.built += 1
        if state is None:
            return LuaState(limits, replay=replay)
        state.rebind(replay)
        return state

    def give(self, state: LuaState) -> None:
        """Take back the state of a run that ended whole (see the module)."""
        if state.poisoned or state.violation is not None:
            return
        # Garbage is the incremental collector's to free; a full collection only when
        # the state looks big (about 0.1 ms each).
        if state.memory_used() > RETAINED_BYTES and state.collect() > RETAINED_BYTES:
            return
        with self._lock:
            free = self._states.setdefault(state.limits, [])
            if len(free) < self.idle:
                free.append(state)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(free) for free in self._states.values())
