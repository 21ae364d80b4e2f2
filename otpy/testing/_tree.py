"""isolated_tree: a fresh supervision tree per test, with private names, a
private temp directory, and proof at exit that nothing it started survives.

Isolation falls out of the runtime: every process is spawned into the
namespace of the tree active in the spawning thread (and its children inherit
it), and names are registered and looked up per namespace. Two trees can use
the same names at once, in two threads of one program; pytest-xdist workers
are separate programs and so separate nodes anyway.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from types import TracebackType
from typing import Any, Callable

from .. import ChildSpec, Exit, OtpyError, Pid, Supervisor, Timeout, exit, is_alive, monitor
from .. import lowlevel
from .. import self as otpy_self
from ._layers import check_layer, require_layer

_SHM = "/dev/shm"
GRACE = 2.0  # a process that was just told to stop may still be exiting
_active: dict[int, int] = {}  # thread id -> trees active in that thread
_active_lock = threading.Lock()
_trees: dict[str, "Tree"] = {}  # namespace -> tree, for helpers that clean up with it


class LeakError(OtpyError):
    """Something a tree started outlived it (already killed or removed)."""

    def __init__(self, tree: str, leaks: list[str]) -> None:
        self.tree = tree
        self.leaks = leaks
        super().__init__(f"isolated tree {tree!r} leaked: " + "; ".join(leaks))


class Tree:
    """What ``with isolated_tree(...) as tree`` gives you."""

    def __init__(self, name: str, namespace: str, supervisor: Pid, tmp_path: str) -> None:
        self.name = name
        self.namespace = namespace
        self.supervisor = supervisor
        self.tmp_path = tmp_path
        self.layer: str | None = None  # the test layer it was started for
        self._on_exit: list[Callable[[], Any]] = []

    def on_exit(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` when the tree exits, before it stops (last added, first run):
        failure injections are healed there, so the tree can stop normally."""
        self._on_exit.append(fn)

    def start_child(self, spec: ChildSpec) -> Pid | None:
        """Start a child under the tree's root supervisor."""
        return Supervisor.start_child(self.supervisor, spec)

    def processes(self) -> list[Pid]:
        """The live processes that belong to this tree."""
        return lowlevel.processes_in(self.namespace)

    def __repr__(self) -> str:
        return f"<Tree {self.name!r} supervisor={self.supervisor!r}>"


class isolated_tree:  # noqa: N801 - used as a context manager, named like one
    """``with isolated_tree("test_name", children=[...], strategy=...) as tree:``

    On exit the root supervisor is stopped (children in reverse order), then
    anything of the tree still alive is killed, names still registered in the
    tree are removed, shared-memory segments its processes left are removed,
    and the temp directory is deleted. If anything had to be cleaned up,
    LeakError says what; an exception raised inside the ``with`` is never
    replaced (the leaks are added to it as a note).

    ``adopt=True`` (what the ``otpy_tree`` fixture uses): the tree owns every
    process started in it, not only its supervisor's children. At exit those
    are sent the exit signal ``"shutdown"``, as a supervisor stops a child;
    only one that has not stopped ``GRACE`` seconds later is killed and
    reported.

    ``stop_timeout``: how long the root supervisor may take to stop its
    children (each within its own shutdown time); after that it is killed,
    its processes with it, and LeakError says so. The exit never waits longer.
    """

    def __init__(self, name: str, children: list[ChildSpec] = (), *,
                 strategy: str = "one_for_one", max_restarts: int = 3,
                 max_seconds: float = 5.0, layer: str | None = None,
                 adopt: bool = False, stop_timeout: float = 60.0) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"an isolated tree needs a non-empty str name, not {name!r}")
        if not isinstance(adopt, bool):
            raise TypeError(f"isolated_tree's adopt must be True or False, not {adopt!r}")
        self.stop_timeout = lowlevel.check_timeout(stop_timeout, "isolated_tree's stop_timeout",
                                                   zero=False)
        self.adopt = adopt
        self.name = name
        self.children = list(children)
        self.options = dict(strategy=strategy, max_restarts=max_restarts,
                            max_seconds=max_seconds)
        self.layer = check_layer(layer)  # a tree above the run's layer is skipped
        self.tree: Tree | None = None

    def __enter__(self) -> Tree:
        require_layer(self.layer)
        namespace = f"{self.name}#{secrets.token_hex(4)}"
        self._shm_before = _listdir(_SHM)
        tmp_path = tempfile.mkdtemp(prefix="otpy-tree-")
        lowlevel.enter_namespace(namespace)
        try:
            supervisor = Supervisor.start_link(self.children, name=self.name, **self.options)
        except BaseException:
            lowlevel.leave_namespace(namespace)
            shutil.rmtree(tmp_path, ignore_errors=True)
            self._cleanup(namespace)
            raise
        with _active_lock:
            me = threading.get_ident()
            _active[me] = _active.get(me, 0) + 1
        self.tree = Tree(self.name, namespace, supervisor, tmp_path)
        self.tree.layer = self.layer
        _trees[namespace] = self.tree
        return self.tree

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        tree = self.tree
        with _active_lock:
            me = threading.get_ident()
            _active[me] -= 1
            if not _active[me]:
                del _active[me]
        _trees.pop(tree.namespace, None)
        leaks = _run_on_exit(tree)
        try:
            # Before anything stops: a segment is the tree's if one of its
            # processes has it open or mapped now (see _segments_held_by).
            segments = self._segments_of(tree.namespace)
            try:
                leaks += self._stop(tree)
                if self.adopt:
                    leaks += self._stop_adopted(tree.namespace)
            finally:  # whatever went wrong above, nothing of the tree survives it
                leaks += self._cleanup(tree.namespace) + _remove_segments(segments)
        finally:
            shutil.rmtree(tree.tmp_path, ignore_errors=True)
            lowlevel.leave_namespace(tree.namespace)
        if leaks:
            error = LeakError(tree.name, leaks)
            if exc is not None:
                exc.add_note(str(error))
                return None
            raise error
        return None

    def _stop(self, tree: Tree) -> list[str]:
        """Stop the root supervisor in order, within stop_timeout; say if it had to be killed."""
        sup = tree.supervisor
        leaks = []
        if is_alive(sup):
            ref = monitor(sup)
            try:
                Supervisor.stop(sup, "shutdown", timeout=self.stop_timeout)
            except Timeout:
                # its children get the exit signal "killed"; one that traps
                # it is left to _cleanup, which kills what remains
                exit(sup, "kill")
                leaks.append(f"the root supervisor did not stop within {self.stop_timeout}s "
                             f"(a child ignoring shutdown?): killed")
            except OtpyError:
                pass  # it died on its own: the Down below says so
            try:
                lowlevel.await_down(ref, timeout=GRACE)
            except Timeout:  # a loaded machine: reported, and _cleanup still runs
                leaks.append(f"the root supervisor {sup!r} was not gone {GRACE}s after it "
                             f"was told to stop")
        lowlevel.flush(lambda m: type(m) is Exit and m.pid == sup)  # our link's Exit
        return leaks

    def _cleanup(self, namespace: str) -> list[str]:
        """Kill the tree's stragglers and drop its names; describe what was found."""
        stragglers = reap(lowlevel.processes_in(namespace), GRACE)
        leaks = [f"processes still alive: {stragglers}"] if stragglers else []
        names = lowlevel.registered_in(namespace)
        if names:
            leaks.append(f"names still registered: {names}")
            for name in names:
                lowlevel.unregister_in(namespace, name)
        return leaks

    def _stop_adopted(self, namespace: str) -> list[str]:
        """Stop what was started in the tree outside its supervisor, as a supervisor would."""
        me = otpy_self()
        stragglers: list[Pid] = []
        seen: set[Pid] = set()
        while True:  # again if one was starting another as it was told to stop
            pids = [p for p in lowlevel.processes_in(namespace) if p != me and p not in seen]
            if not pids:
                break
            seen.update(pids)
            for pid in reversed(pids):  # the latest started first
                exit(pid, "shutdown")
            stragglers += reap(pids, GRACE)
        return [f"processes that did not stop on shutdown: {stragglers}"] if stragglers else []

    def _segments_of(self, namespace: str) -> set[str]:
        """Segments created while the tree was open that its processes hold."""
        new = _listdir(_SHM) - self._shm_before
        if not new:
            return set()  # the usual case costs one listdir
        return _segments_held_by([p.os_pid for p in lowlevel.processes_in(namespace)], new)


def _segments_held_by(os_pids: list[int], names: set[str]) -> set[str]:
    """Which of ``names`` (in /dev/shm) these processes have open or mapped.

    A segment in /dev/shm does not say who created it: another program, or
    another test run, may create one while the tree is open. So only what the
    tree's own processes hold is the tree's; everything else is left alone.
    """
    prefix = _SHM + "/"
    held = set()
    for os_pid in os_pids:
        try:
            for fd in os.listdir(f"/proc/{os_pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{os_pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    held.add(target[len(prefix):])
            with open(f"/proc/{os_pid}/maps") as maps:
                for line in maps:
                    at = line.find(prefix)
                    if at >= 0:  # a mapping that outlived its descriptor
                        held.add(line[at + len(prefix):].rstrip("\n").removesuffix(" (deleted)"))
        except OSError:
            continue  # it exited meanwhile
    return held & names


def _remove_segments(names: set[str]) -> list[str]:
    """Unlink the segments still there once the tree's processes are gone."""
    left = sorted(name for name in names if os.path.exists(os.path.join(_SHM, name)))
    for name in left:
        try:
            os.unlink(os.path.join(_SHM, name))
        except OSError:
            pass
    return [f"shared memory segments: {left}"] if left else []


def active_tree() -> Tree | None:
    """The innermost isolated tree active in the calling thread, if any."""
    return _trees.get(lowlevel.current_namespace())


def _run_on_exit(tree: Tree) -> list[str]:
    failed = []
    while tree._on_exit:
        fn = tree._on_exit.pop()
        try:
            fn()
        except Exception as exc:  # reported with the leaks; the tree still stops
            notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
            failed.append(f"on_exit {fn!r} failed: {type(exc).__name__}: {exc}{notes}")
    return failed


def reap(pids: list[Pid], grace: float) -> list[Pid]:
    """Wait up to ``grace`` seconds for ``pids`` to exit; kill the ones that
    did not and return them. Their Exits (if linked) are dropped too."""
    me = otpy_self()
    refs = {monitor(p): p for p in pids if p != me}
    deadline = time.monotonic() + grace
    stragglers = []
    for ref, pid in refs.items():
        try:
            lowlevel.await_down(ref, max(0.0, deadline - time.monotonic()))
        except Timeout:
            stragglers.append(pid)
            exit(pid, "kill")
            lowlevel.await_down(ref, 60)
    lowlevel.flush(lambda m: type(m) is Exit and m.pid in refs.values())
    return stragglers


def _listdir(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()

