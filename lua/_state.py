"""A Lua state: one lupa runtime, sandboxed, with the trusted core and the moonwire
modules loaded, and the entry code compiled into it.

Lua never reaches Python (DESIGN §10): no ``python`` global, no eval, no builtins, an
attribute filter that refuses every attribute, and Python callables only as upvalues of
trusted Lua code. User code runs in per-chunk environments built by the core.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lupa.lua55 as lupa

from ._chunks import (CORE_SOURCE, MODULE_CHUNKS, PATTERNS_SOURCE, PRELUDE_SOURCE, PROCESS_SOURCE,
                      TYPES_SOURCE, WORKFLOW_SOURCE, bytecode)
from ._errors import Kind, MoonwireError, internal, invalid
from ._data_host import payload_data
from ._host import HostFunctions
from ._process import ProcessFunctions
from ._registry_host import EMPTY_REGISTRY, Registry
from ._typed import TypedSyntaxError, strip
from ._values import as_text, decode_string, to_lua, to_python

if TYPE_CHECKING:
    from ._protocols import Running

TOKENS_PER_BATCH = 64
LUA_VERSION = "Lua 5.5"

# Raised in Lua when a resume runs out of instructions; recognised by identity of text.
BUDGET_EXCEEDED = b"moonwire: instruction budget exceeded"
OUT_OF_MEMORY = b"not enough memory"

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Runaway protection for one state.

    ``memory``: bytes the whole state may hold (None: unlimited).
    ``instructions``: VM instructions one thread may run between two yields (None: unlimited).
    """

    memory: int | None = 64 * MiB
    instructions: int | None = 10_000_000


@dataclass(frozen=True, slots=True)
class LuaCode:
    """Code to load into a state: an entry's source and how to find its export."""

    id: str
    source: bytes
    chunkname: str
    method: str | None = None
    modules: frozenset[str] = frozenset()
    imports: tuple[tuple[str, LuaCode], ...] = ()
    is_library: bool = False
    revision: int = 0
    """Which reading of the entry this is: 0 when the node started, a new number each
    time a reload (``moonwire run --watch``) changed it or one of its imports."""

    @property
    def key(self) -> str:
        """What a state registers this code as: its entry id, with the revision after a reload."""
        return f"{self.id}#{self.revision}" if self.revision else self.id


@dataclass(frozen=True, slots=True)
class Replay:
    """What a workflow's state reads instead of the machine (DESIGN §11): the workflow's
    clock, and a random source seeded from its history. Such a state also hashes
    strings with a fixed seed, so ``pairs()`` visits keys in the same order on every node."""

    now_ns: Callable[[], int]
    random: random.Random


def memory_reserve(limit: int) -> int:
    """How far lupa's hard memory limit sits above the one user code sees: room for the
    values Python functions hand back between two checks of the limit (every 1000
    instructions), which the instruction budget keeps small."""
    return max(32 * MiB, limit // 2)


class _Token:
    """What an opaque Lua object (``core.new_object``) wraps: nothing at all."""

    __slots__ = ()


def _new_tokens() -> tuple[_Token, ...]:
    return tuple(_Token() for _ in range(TOKENS_PER_BATCH))


_syntax_checker: Any = None


def syntax_error(source: bytes, chunkname: str) -> str | None:
    """The syntax error loading ``source`` would raise (``chunkname:LINE: message``,
    typed Lua included), or None: for ``moonwire check``, without building a state."""
    global _syntax_checker
    if _syntax_checker is None:
        runtime = lupa.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
        _syntax_checker = runtime.eval("function(text, name) local _, err = load(text, '=' .. name, 't', {}) "
                                       "return err end")
    err = _syntax_checker(source, chunkname.encode())
    if err is None:
        return None
    try:
        stripped = strip(source, chunkname)
    except TypedSyntaxError as typed:
        return str(typed)
    err = _syntax_checker(stripped.source, chunkname.encode()) if stripped.changed else err
    return None if err is None else decode_string(err)


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("Lua code cannot access Python attributes")


@dataclass(slots=True)
class _Loaded:
    export: Any


class LuaState:
    """One sandboxed Lua runtime. Not thread-safe; used from the event loop only."""

    def __init__(self, limits: Limits = Limits(), *, log: logging.Logger | None = None,
                 replay: Replay | None = None, registry: Registry | None = None) -> None:
        self.limits = limits
        self.registry: Registry = registry if registry is not None else EMPTY_REGISTRY
        """The node's entries and environment variables (``registry``, ``env``); empty
        without a node."""
        self.log = log or logging.getLogger("moonwire.lua")
        # A random hash seed per state (the default) keeps crafted keys from degrading
        # tables; a workflow gives that up for an iteration order that replays.
        self._fixed_seed = replay is not None
        seeding = {"string_hash_seed": 0} if self._fixed_seed else {}
        self.runtime = lupa.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attributes,
            # The limit user code sees is enforced from Lua (core.set_limits); lupa's
            # hard limit leaves a reserve for what lupa allocates holding the GIL.
            max_memory=None if limits.memory is None else limits.memory + memory_reserve(limits.memory),
            **seeding,
        )
        self.core = self._trusted(CORE_SOURCE, self._trusted(PATTERNS_SOURCE))
        self.clock: Callable[[], int] = time.time_ns
        """Nanoseconds since the epoch: the machine's, or a workflow's recorded clock."""
        self.random: random.Random | None = None
        """A workflow's seeded random source (uuids); None: the machine's."""
        self.violation: str | None = None
        """What non-deterministic call a workflow made, once it made one."""
        if replay is not None:
            self.rebind(replay)
        self.core.set_token_source(_new_tokens)
        self.host = HostFunctions(self)
        self.prelude = self._trusted(PRELUDE_SOURCE, self.core, self.host.table())
        for source, functions in MODULE_CHUNKS:
            self._trusted(source, self.core, functions(self).table(), self.prelude)
        self._trusted(PROCESS_SOURCE, self.core, self.table_from(ProcessFunctions(self).table()), self.prelude)
        self.types = self._trusted(TYPES_SOURCE, self.core, self.prelude)
        self.core.set_limits(limits.instructions or 0, BUDGET_EXCEEDED, limits.memory)
        self.current: Running | None = None
        """The unit whose thread is running (a :class:`Unit`), for ``ctx`` and friends."""
        self.poisoned = False
        """Set after a memory error: the state may hold garbage it cannot free; retire it."""
        self._loaded: dict[str, _Loaded] = {}
        # Looked up once: lupa returns garbage for a table lookup made while Lua is in
        # the middle of a call into Python (a nested call), but calling a function
        # fetched beforehand is fine.
        self._spawn = self.core.spawn
        self._start = self.core.start
        self._start_load = self.core.start_load
        self._resume = self.core.resume
        self._kill = self.core.kill
        self._compile = self.core.compile
        self._error_fields = self.prelude.error_fields
        self._make_error = self.prelude.make_error
        self._userdata_parts = self.prelude.userdata_parts
        self.host_error = self.prelude.host_error
        self.new_payload = self.prelude.new_payload
        self.new_time = self.prelude.new_time
        self.wrap_channel = self.prelude.wrap_channel
        self.new_message = self.prelude.new_message
        self.new_event = self.prelude.new_event
        self.new_group_event = self.prelude.new_group_event
        self.new_box = self.prelude.new_box
        self.box_open = self.prelude.box_open
        self.box_post = self.prelude.box_post
        self.box_pop = self.prelude.box_pop
        self.box_depth = self.prelude.box_depth
        self.box_waiting = self.prelude.box_waiting
        self.box_trace = self.prelude.box_trace
        self.box_items = self.prelude.box_items
        self.box_close = self.prelude.box_close
        self.delivered_here = self.prelude.delivered_here
        self.boxes: dict[int, Any] = {}
        """The mailboxes whose box is open, by the id their box carries (``box_hand``)."""
        self.box_memory = (limits.memory or 0) // 2 or 1 << 62
        """Lua memory above which a post from Python closes a box (``LocalPath._to_box``)."""
        self.prelude.set_box_memory(self.box_memory)
        self._register_code = self.prelude.register_code
        self._forget_code = self.prelude.forget_code
        self._instantiate = self.prelude.instantiate
        self._build_types = self.types.build
        self.core.set_globals(self.prelude.globals, self.types.library_views)
        self.types.adopt_string_view(self.core.new_env()[b"string"])
        self._workflow_host: Any = None
        """The Lua table of the ``workflow`` module's host functions, once added."""
        self._registered: dict[str, str] = {}
        """Entry id -> the key of the code registered for it (one revision at a time)."""

    def add_workflow_module(self, functions: dict[str, Callable[..., Any]]) -> None:
        """Make ``require("workflow")`` available, backed by ``functions`` (``info``,
        ``history_length``, ``history_size``, ``version``, ``worker``, ``attrs``): the running
        workflow's, supplied by the node. Called again (the next run on a reused state), the
        module stays and reads the new ``functions``."""
        if self._workflow_host is not None:  # a reused workflow state: the new run's functions
            for name, fn in functions.items():
                self._workflow_host[name.encode()] = fn
            return
        table = self.table_from({name.encode(): fn for name, fn in functions.items()})
        self._trusted(WORKFLOW_SOURCE, self.core, table, self.prelude)
        self._workflow_host = table

    def rebind(self, replay: Replay) -> None:
        """Give this state a workflow run's clock and random source (``math.random``
        reseeded from it, as a new state's is), and forget the last run's violation: a
        state built with a ``replay`` serves one run after another. What a run's units
        made lives in their own environments (as processes sharing a state), so nothing
        else carries over (the preemption count starts again too)."""
        if not self._fixed_seed:
            raise ValueError("only a workflow's state (one built with a Replay) can be rebound")
        self.clock, self.random, self.violation, self.current = replay.now_ns, replay.random, None, None
        if hasattr(self, "prelude"):  # a reused state (a new one has none yet, nor a count)
            self.prelude.reset_preempt()
        self.core.make_deterministic(replay.random.getrandbits(62), lambda: self.clock() // 1_000_000_000,
                                     self._refuse)

    def collect(self) -> int:
        """Run a full garbage collection; the bytes the state holds afterwards."""
        self.runtime.eval("collectgarbage")(b"collect")
        return self.memory_used()

    def _trusted(self, source: bytes, *args: Any) -> Any:
        """Run one of this package's trusted chunks with ``args``, from its bytecode."""
        return self.runtime.execute(bytecode(source), *args, mode="b")

    def _refuse(self, what: bytes) -> None:
        self.violation = self.violation or decode_string(what)

    # ------------------------------------------------------------ values

    @staticmethod
    def lua_type(value: Any) -> str:
        kind = lupa.lua_type(value)
        return kind or type(value).__name__

    def table_from(self, value: Any) -> Any:
        return self.runtime.table_from(value)

    def error_fields(self, value: Any) -> MoonwireError | None:
        fields = self._error_fields(value)
        if fields is None:
            return None
        message, kind, retryable, details, stack = fields
        return MoonwireError(
            str(decode_string(message)) if isinstance(message, bytes) else str(message),
            decode_string(kind) if isinstance(kind, bytes) else str(kind),
            retryable=retryable,
            details=to_python(self, details) if details is not None else None,
            stack=decode_string(stack) if isinstance(stack, bytes) else None,
        )

    def userdata_parts(self, value: Any) -> tuple[str, Any, Any]:
        parts = self._userdata_parts(value)
        if not isinstance(parts, tuple):
            parts = (parts,)
        tag = as_text(parts[0])
        if tag == "payload":  # its format, and the value it holds
            return tag, as_text(parts[1]), parts[2] if len(parts) > 2 else None
        if tag == "text":
            return tag, as_text(parts[1]), None
        return tag, None, None

    @staticmethod
    def payload_data(format: str, raw: Any) -> Any:
        return payload_data(format, raw)

    def make_error(self, error: MoonwireError) -> Any:
        details = to_lua(self, error.details) if error.details is not None else None
        return self._make_error(error.message.encode(), str(error.kind).encode(), error.retryable, details)

    def to_error(self, value: Any) -> MoonwireError:
        """A Lua error value (an error object, a string, anything) as a MoonwireError."""
        if isinstance(value, bytes):
            if value == BUDGET_EXCEEDED:
                return internal(f"instruction budget exceeded: more than {self.limits.instructions} "
                                "instructions without yielding")
            if value == OUT_OF_MEMORY:
                self.poisoned = True
                return internal(f"memory limit exceeded: the Lua state may hold at most "
                                f"{(self.limits.memory or 0) // MiB} MiB")
            return MoonwireError(str(decode_string(value)), Kind.UNKNOWN)
        if isinstance(value, BaseException):  # raised by a Python function Lua called
            return internal(f"{type(value).__name__}: {value}")
        if self.lua_type(value) == "userdata":
            err = self.error_fields(value)
            if err is not None:
                return err
        try:
            return MoonwireError(str(to_python(self, value)), Kind.UNKNOWN)
        except MoonwireError:
            return MoonwireError(f"a Lua {self.lua_type(value)} was raised", Kind.UNKNOWN)

    # ------------------------------------------------------------ threads

    def spawn(self, fn: Any, owner: Any = None) -> int:
        """A new thread that runs ``fn``: its first :meth:`resume` passes the arguments.
        ``owner``: the box of the process it belongs to (the local message path's sender)."""
        return int(self._spawn(fn, owner))

    def start(self, fn: Any, *args: Any, load: bool = False) -> tuple[int, tuple[Any, ...]]:
        """A new thread running ``fn(*args)``, resumed at once: its id and the outcome
        of that first resume (as :meth:`resume`). A ``load`` (a chunk's top level) is
        never preempted."""
        try:
            outcome = (self._start_load if load else self._start)(fn, *args)
        except lupa.LuaMemoryError:
            # No id to kill: a state out of memory is retired (``poisoned``) anyway.
            return 0, (b"error", OUT_OF_MEMORY)
        return int(outcome[0]), outcome[1:]

    def resume(self, tid: int, *values: Any) -> tuple[Any, ...]:
        """Resume thread ``tid``; see ``core.resume`` for the outcomes."""
        try:
            outcome = self._resume(tid, *values)
        except lupa.LuaMemoryError:
            self._kill(tid)
            return (b"error", OUT_OF_MEMORY)
        return outcome if isinstance(outcome, tuple) else (outcome,)

    def kill(self, tid: int) -> None:
        self._kill(tid)

    # ------------------------------------------------------------ code

    def load(self, code: LuaCode) -> Any:
        """The export of ``code`` in this state (its ``method``, or a library's value),
        instantiating it on first use and reusing that instance afterwards (functions:
        one instance per state).

        Raises:
            MoonwireError: see :meth:`instantiate`.
        """
        loaded = self._loaded.get(code.key)
        if loaded is not None:
            return loaded.export
        export = self.instantiate(code)
        self._loaded[code.key] = _Loaded(export)
        return export

    def instantiate(self, code: LuaCode) -> Any:
        """A new instance of ``code``: its chunk run in a fresh environment, with its own
        globals and its own copies of the libraries it requires (processes: one instance
        each, so no two share module state). Compiles the code on first use.

        Raises:
            MoonwireError: a syntax error (with file and line), an error while running
                the chunk, or no such method.
        """
        self._register(code)
        value = self._run_chunk(code, self._instantiate, code.key.encode())
        if code.is_library:
            return True if value is None else value  # as Lua's require: a chunk returning nothing loads as true
        return self._export(code, value)

    def prepare(self, code: LuaCode) -> None:
        """Compile ``code`` and its imports into this state without running anything.

        Raises:
            MoonwireError: a syntax error (with file and line).
        """
        self._register(code)

    def _register(self, code: LuaCode) -> None:
        previous = self._registered.get(code.id)
        if previous == code.key:
            return
        for _, library in code.imports:
            self._register(library)
        compiled, types = self._compile_typed(code)
        allowed = self.table_from({name.encode(): True for name in code.modules})
        imports = self.table_from({alias.encode(): library.key.encode() for alias, library in code.imports})
        self._register_code(code.key.encode(), compiled, allowed, imports, types)
        if previous is not None:  # an older revision: instances of it keep their own reference to it
            self._forget_code(previous.encode())
        self._registered[code.id] = code.key

    def _compile_typed(self, code: LuaCode) -> tuple[Any, Any]:
        """The compiled chunk of ``code`` and its declared types (a Lua table, or None).

        Plain Lua compiles as it is; only source Lua refuses goes through the typed-Lua
        pass (lua/_typed.py), which is cached by source, so a plain entry costs nothing.
        """
        chunkname = code.chunkname.encode()
        compiled = self._compile(code.source, chunkname)
        if not isinstance(compiled, tuple):
            return compiled, None
        if code.source[:1] == b"\x1b":  # binary: core.compile's own refusal
            raise invalid(f"syntax error in {code.id}: {decode_string(compiled[1])}")
        try:
            stripped = strip(code.source, code.chunkname)
        except TypedSyntaxError as err:
            raise invalid(f"syntax error in {code.id}: {err}") from None
        if stripped.changed:
            compiled = self._compile(stripped.source, chunkname)
        if isinstance(compiled, tuple):  # nil, message
            raise invalid(f"syntax error in {code.id}: {decode_string(compiled[1])}")
        types = self._build_types(to_lua(self, list(stripped.declarations))) if stripped.declarations else None
        return compiled, types

    def _run_chunk(self, code: LuaCode, fn: Any, *args: Any) -> Any:
        # In a thread, so the instruction budget applies to top-level code too.
        tid, outcome = self.start(fn, *args, load=True)
        tag = outcome[0]
        if tag == b"return":
            return outcome[1] if len(outcome) > 1 else None
        if tag == b"request":
            self.kill(tid)
            raise invalid(f"{code.id}: a module cannot block while it loads (it called a yielding function)")
        if tag == b"error":
            raise MoonwireError(f"{code.id} failed to load: {self.to_error(outcome[1]).message}", Kind.INTERNAL,
                                retryable=False)
        raise invalid(f"{code.id}: yielded outside a coroutine while loading")

    def _export(self, code: LuaCode, value: Any) -> Any:
        kind = self.lua_type(value)
        if kind == "function":
            return value
        if kind == "table" and code.method:
            method = value[code.method.encode()]
            if self.lua_type(method) == "function":
                return method
            raise MoonwireError(f"{code.id}: method {code.method!r} not found in the table the chunk returned",
                                Kind.NOT_FOUND, retryable=False)
        wanted = f"a function, or a table with method {code.method!r}" if code.method else "a function (no method is set)"
        raise MoonwireError(f"{code.id}: method not found: the chunk returned a {kind}, expected {wanted}",
                            Kind.NOT_FOUND, retryable=False)

    def memory_used(self) -> int:
        return int(self.runtime.get_memory_used())
