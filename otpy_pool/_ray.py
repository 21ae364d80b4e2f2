"""Pool workers placed on a Ray cluster: ``RayPlacement``.

The pool does not change. It runs local worker processes as ever; with
``placement=RayPlacement(...)`` the Worker class they run is a *stand-in*
for the user's (``RayPlacement.worker_class``). A stand-in's ``init``
connects its process to the cluster as a Ray driver and creates one actor
there holding the user's Worker instance; each command is one actor call,
with its session id, so the actor keeps every session's state.

Fate is shared both ways, which is what lets the pool's ordinary crash
handling (WorkerCrashed, replacement, replay) do the rest:

- The actor dies (its process killed, its node lost): the command in
  flight, or else a call that stays pending on the actor in a concurrency
  group of its own (the *watch*), raises ``RayActorError``, and the
  stand-in exits with ``(ACTOR_DIED, detail)``.
- The stand-in dies, however (SIGKILL included, and so when the pool
  stops or the program dies and otpy kills its processes): the actor's
  owner is gone, and Ray kills the actors a driver owns when it
  disconnects. So the driver must be the stand-in, never the program or a
  detached actor (measured in docs/distributed.md).

A Worker with ``async def`` methods is placed as an *async* actor: its
stand-in is an async Worker too (each of its up to ``max_concurrency``
commands awaits its actor call), the actor runs the commands as tasks of
its event loop, and a command cancelled at its deadline is cancelled on
the actor as well (``ray.cancel``: the command sees CancelledError).

Ray is imported by ``RayPlacement()`` (so a missing Ray is said at once;
the import starts nothing) and by the stand-ins, never by ``import otpy_pool``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import pickle
import sys
import threading
import time
import traceback
import weakref
from typing import Any, ClassVar, Mapping

import otpy
from otpy import lowlevel

from ._worker import FUNCTION, Session, Worker, command

INSTALL_HINT = "pip install 'otpy[ray]'"
ACTOR_DIED = "ray_actor_died"  # a stand-in's exit reason: (ACTOR_DIED, what Ray said)
CONNECT_MARGIN = 30.0  # seconds a stand-in may take beyond the user's init_timeout
STOP_MARGIN = 2.0  # and beyond its shutdown_timeout, to kill the actor after terminate
WATCH = "otpy_watch"  # the actor's concurrency group for the watch call
_SPECIAL = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}  # Ray's own options


def _ray() -> Any:
    """Ray, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"RayPlacement needs Ray, which is not installed: {INSTALL_HINT}") \
            from None
    return ray


class RayPlacement:
    """Run each of a pool's workers as a Ray actor, on whatever node Ray picks.

    ``address``: the cluster. None: the one this program's own Ray driver is
    connected to (if it called ``ray.init``), else as ``"auto"``; ``"auto"``:
    ``RAY_ADDRESS`` or the latest cluster started on this machine (never a
    new one); ``"host:port"`` or ``"ray://host:port"``: that one.
    ``resources``: what each worker's actor holds (``{"CPU": 1}``; ``"GPU"``,
    ``"memory"`` and custom resources too). ``runtime_env``: Ray's, for the
    workers' job (packages, env vars, working_dir). Pass it as
    ``Pool.start_link(..., placement=RayPlacement(...))``.

    A worker whose actor dies exits with ``(RayPlacement.ACTOR_DIED, what
    Ray said)``: the reason its in-flight command's WorkerCrashed carries.
    """

    ACTOR_DIED: ClassVar[str] = ACTOR_DIED

    def __init__(self, address: str | None = None, resources: Mapping[str, float] | None = None,
                 runtime_env: dict | None = None) -> None:
        _ray()  # at once, before a pool starts (importing Ray starts nothing)
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise TypeError(f"address must be None, 'auto', 'host:port' or 'ray://host:port', "
                            f"not {address!r}")
        resources = {"CPU": 1} if resources is None else resources
        if not isinstance(resources, Mapping):
            raise TypeError(f"resources must be a dict of resource names to amounts, "
                            f"not {resources!r}")
        for key, amount in resources.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"resources: a resource name is a non-empty str, not {key!r}")
            if not isinstance(amount, (int, float)) or isinstance(amount, bool) or \
                    not amount >= 0:
                raise ValueError(f"resources[{key!r}] must be a number >= 0, not {amount!r}")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise TypeError(f"runtime_env must be a dict or None, not {runtime_env!r}")
        self.address = address
        self.resources = dict(resources)
        self.runtime_env = runtime_env

    def __repr__(self) -> str:
        return (f"RayPlacement(address={self.address!r}, resources={self.resources!r}, "
                f"runtime_env={self.runtime_env!r})")

    def worker_class(self, worker: type[Worker],
                     max_concurrency: int | None = None) -> type[Worker]:
        """The Worker class the pool runs in place of ``worker``: a stand-in
        with the same commands (and replay flags), each forwarded to the actor.
        An async ``worker`` gets an async stand-in and an async actor, each
        running ``max_concurrency`` commands at once (None: the class's)."""
        if not (isinstance(worker, type) and issubclass(worker, Worker)):
            raise TypeError(f"worker must be a Worker subclass, not {worker!r}")
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized() and not lowlevel.node_running():
            raise RuntimeError(RAY_FIRST)  # said here, before any worker is forked
        options: dict[str, Any] = {"num_cpus": 0, "resources": {}}
        for key, amount in self.resources.items():
            if key in _SPECIAL:
                options[_SPECIAL[key]] = amount
            else:
                options["resources"][key] = amount
        attrs: dict[str, Any] = {
            "__module__": __name__, "__qualname__": f"{worker.__qualname__}@ray",
            "init_timeout": _plus(worker.init_timeout, CONNECT_MARGIN),
            "shutdown_timeout": _plus(worker.shutdown_timeout, STOP_MARGIN),
        }
        asynchronous = worker.is_async()
        if asynchronous:
            slots = worker.max_concurrency if max_concurrency is None else max_concurrency
            attrs.update(max_concurrency=slots, cancel_grace=worker.cancel_grace)
            # its commands, and room for a health check beside them
            options["max_concurrency"] = slots + 1
        base, forwarder = (_AsyncStandIn, _aforwarder) if asynchronous else (_StandIn, _forwarder)
        attrs["_ray_target"] = (worker, _resolve(self.address), options, self.runtime_env)
        attrs[FUNCTION] = command(forwarder(FUNCTION))  # the executor's functions run there too
        for name, replay in worker.commands().items():
            attrs[name] = command(forwarder(name), replay=replay)
        return type(f"{worker.__name__}@ray", (base,), attrs)


RAY_FIRST = ("Ray was initialized in this program before otpy's node started, so "
             "its worker processes would inherit a copy of it: call "
             "otpy.lowlevel.start() before ray.init()")


def _plus(seconds: float | None, margin: float) -> float | None:
    return None if seconds is None else seconds + margin


def _resolve(address: str | None) -> str:
    """None: the cluster this program's driver is connected to, else "auto"
    (a stand-in must never start a cluster of its own: it would die with it)."""
    if address is not None:
        return address
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        gcs = ray.get_runtime_context().gcs_address
        if gcs:
            return gcs
    return "auto"


def _forwarder(name: str) -> Any:
    def forward(self: _StandIn, session: Session, *args: Any, **kwargs: Any) -> Any:
        link = self._ray_link
        return link.outcome(link.send(session, name, args, kwargs))

    forward.__name__ = forward.__qualname__ = name
    return forward


def _aforwarder(name: str) -> Any:
    async def forward(self: _StandIn, session: Session, *args: Any, **kwargs: Any) -> Any:
        link = self._ray_link
        return await link.aoutcome(link.send(session, name, args, kwargs))

    forward.__name__ = forward.__qualname__ = name
    return forward


class _StandIn(Worker):
    """The local half of a placed worker. Its own names start with ``_ray``
    so that none of them can shadow a user's command."""

    _ray_target: ClassVar[tuple]  # (worker class, address, actor options, runtime_env)
    _ray_link: _Link

    def init(self, *args: Any, **kwargs: Any) -> None:
        worker, address, options, runtime_env = self._ray_target
        limit = type(self).init_timeout  # this one's own error comes before the pool's
        deadline = None if limit is None else time.monotonic() + limit - 1.0
        self._ray_link = _Link(worker, address, options, runtime_env, args, kwargs, deadline)

    def health_check(self) -> Any:
        return self._ray_link.call("health")

    def terminate(self, reason: Any) -> None:
        self._ray_link.stop(reason)


class _AsyncStandIn(_StandIn):
    """The local half of a placed async worker: an async Worker whose
    commands each await their actor call (init and terminate, which the
    worker runs outside its loop, stay blocking)."""

    async def health_check(self) -> Any:  # type: ignore[override]
        return await self._ray_link.aoutcome(self._ray_link.actor.health.remote())


def _end(actor: Any, sid: Any, generation: int) -> None:
    try:
        actor.end.remote(sid, generation)
    except Exception:  # the driver is shutting down: the actor goes with it
        pass


class _Link:
    """A stand-in's Ray driver and the one actor it owns."""

    def __init__(self, worker: type[Worker], address: str, options: dict,
                 runtime_env: dict | None, args: tuple, kwargs: dict,
                 deadline: float | None) -> None:
        ray = self.ray = _ray()
        if ray.is_initialized():  # copied into this fork from a program that ran ray.init
            raise RuntimeError(RAY_FIRST)
        self.worker = worker
        self.stopping = False
        self.actor_id = self.node_id = "?"
        self.generations = itertools.count(1)
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        host = ray.remote(concurrency_groups={WATCH: 1})(
            _AsyncHost if worker.is_async() else _Host)
        self.actor = host.options(max_restarts=0, max_task_retries=0,
                                  scheduling_strategy="SPREAD", **options).remote()
        try:
            started = self.actor.start.remote(worker, args, kwargs)
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait([started], timeout=wait)
            if not ready:
                amounts = {k: v for k, v in options.items() if k != "resources"}
                raise TimeoutError(
                    f"Ray did not start {worker.__qualname__} in time: no node of the cluster "
                    f"at {address!r} has {({**amounts, **options['resources']})} free, or "
                    f"{worker.__qualname__}.init_timeout ({worker.init_timeout}s) is too short")
            self.actor_id, self.node_id, self.actor_pid = self.outcome(started)
        except BaseException:
            self.stopping = True
            ray.kill(self.actor)
            raise
        self.run = self.actor.run
        self.watch = self.actor.watch.options(concurrency_group=WATCH).remote()
        threading.Thread(target=self.watch_actor, name="otpy-ray-watch", daemon=True).start()
        lowlevel.annotate(otpy.self(), ray_actor=self.actor_id, ray_node=self.node_id,
                          behaviour=f"otpy_pool.Worker:{worker.__qualname__} on Ray actor "
                                    f"{self.actor_id[:12]}, node {self.node_id[:12]}")

    def outcome(self, ref: Any) -> Any:
        """The value of an actor call; the user's exception raised as itself;
        the stand-in exits if the actor is gone."""
        try:
            answer = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:  # ActorDiedError, ActorUnavailableError
            self.stopping = True  # the watch need not say it too
            raise otpy.ProcessExit(self.reason(exc)) from None
        return self.decode(answer)

    async def aoutcome(self, ref: Any) -> Any:
        """As ``outcome``, awaited in an async worker's loop. Cancelled (the
        command's deadline), it cancels the actor's task too and waits for it
        to end, as the worker's ``cancel_grace`` allows (after which the
        caller has this process killed, and the actor goes with it)."""
        try:
            answer = await ref
        except asyncio.CancelledError:
            self.ray.cancel(ref)
            with contextlib.suppress(Exception):  # TaskCancelledError, or its own end
                await ref
            raise
        except self.ray.exceptions.RayActorError as exc:
            self.stopping = True
            # a task cannot end its process with a reason (ProcessExit would
            # stay in the task): the zygote kills it, this task waits for that
            lowlevel.kill(otpy.self(), self.reason(exc))
            await asyncio.get_running_loop().create_future()
        return self.decode(answer)

    def decode(self, answer: tuple) -> Any:
        kind, *value = answer
        if kind == "ok":
            return value[0]
        if kind == "error":
            try:
                error = pickle.loads(value[0])
            except Exception as exc:
                error = otpy.RemoteError("(undecodable)", f"the actor's exception could not "
                                         f"be decoded here: {exc!r}", "", otpy.self())
            raise error
        type_name, text, trace = value  # an exception pickle refused
        raise otpy.RemoteError(type_name, text, trace, otpy.self())

    def call(self, method: str, *args: Any) -> Any:
        return self.outcome(getattr(self.actor, method).remote(*args))

    def send(self, session: Session, name: str, args: tuple, kwargs: dict) -> Any:
        """A command's call on the actor (its ObjectRef), in the session's
        state there. A new local Session (a new binding: first use, replay,
        or after a lost replay) starts a new generation, so the actor starts
        that session afresh; when the worker drops it, the actor drops its
        state too."""
        if name == FUNCTION:  # Pool.executor(): (fn, args, kwargs)
            return self.actor.function.remote(*args)
        sid = session.id
        generation = getattr(session, "_otpy_ray_generation", 0)
        fresh = sid is not None and generation == 0
        if fresh:
            generation = session._otpy_ray_generation = next(self.generations)  # type: ignore
            weakref.finalize(session, _end, self.actor, sid, generation).atexit = False
        # one argument: Ray serializes each argument of a call on its own (~70 us for 6)
        return self.run.remote((sid, generation, fresh, name, args, kwargs))

    def stop(self, reason: Any) -> None:
        """A planned stop: the user's terminate on the actor, then the actor
        is killed (its owner's exit would kill it too, a moment later)."""
        self.stopping = True
        try:
            self.ray.get(self.actor.terminate.remote(reason),
                         timeout=self.worker.shutdown_timeout)
        except Exception as exc:
            lowlevel.logger().warning("ray.terminate_failed", error=repr(exc))
        self.ray.kill(self.actor)

    def watch_actor(self) -> None:
        """Notices the actor's death while no command is in flight: the
        watch call never returns, so it raises only when the actor is gone."""
        try:
            self.ray.get(self.watch)
        except Exception as exc:  # RayActorError; anything else leaves the actor out of reach
            if not self.stopping:  # from this thread: the zygote kills the process
                lowlevel.kill(otpy.self(), self.reason(exc))

    def reason(self, exc: BaseException) -> tuple[str, str]:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = [line for line in lines[1:] if line.startswith("The actor is dead because")]
        said = " ".join(lines[:1] + why[:1])[:300]
        return (ACTOR_DIED, f"actor {self.actor_id} on node {self.node_id}: "
                            f"{type(exc).__name__}: {said}")


# ---- the actor -----------------------------------------------------------------------------

class _Host:
    """The Ray actor: one instance of the user's Worker and its sessions.

    Commands run on the default concurrency group's one thread, in the order
    the stand-in sends them (it waits for each); ``init`` runs there too, so
    a worker's thread-bound resources (a sqlite connection, say) work.
    Outcomes travel as ("ok", value), ("error", pickled exception with its
    traceback) or ("remote", type, text, traceback) for one pickle refuses.
    """

    def __init__(self) -> None:
        self.user: Any = None
        self.sessions: dict[Any, tuple[int, Session]] = {}
        self.forever = threading.Event()

    def start(self, cls: type[Worker], args: tuple, kwargs: dict) -> tuple:
        import ray

        self.user = cls.__new__(cls)
        outcome = self.call(self.user.init, args, kwargs)
        if outcome[0] != "ok":
            return outcome
        context = ray.get_runtime_context()
        return ("ok", (context.get_actor_id(), context.get_node_id(), os.getpid()))

    def run(self, request: tuple) -> tuple:
        try:
            method, session, args, kwargs = self.command(request)
        except AttributeError as exc:  # the stand-in forwards the class's commands only
            return self.failed(exc)
        return self.call(method, (session, *args), kwargs)

    def command(self, request: tuple) -> tuple:
        """(the user's method, its Session, args, kwargs) for a run's request."""
        sid, generation, fresh, name, args, kwargs = request
        if sid is None:
            session = Session(None)
        else:
            held = self.sessions.get(sid)
            if fresh or held is None or held[0] != generation:
                held = self.sessions[sid] = (generation, Session(sid))
            session = held[1]
        return getattr(self.user, name), session, args, kwargs

    def function(self, fn: Any, args: tuple, kwargs: dict) -> tuple:
        return self.call(fn, args, kwargs)

    def health(self) -> tuple:
        return self.call(self.user.health_check, (), {})

    def terminate(self, reason: Any) -> tuple:
        return self.call(self.user.terminate, (reason,), {})

    def end(self, sid: Any, generation: int) -> None:
        if self.sessions.get(sid, (None,))[0] == generation:
            del self.sessions[sid]

    def watch(self) -> None:
        self.forever.wait()

    @classmethod
    def call(cls, fn: Any, args: tuple, kwargs: dict) -> tuple:
        try:
            return ("ok", fn(*args, **kwargs))
        except Exception as exc:
            return cls.failed(exc)

    @staticmethod
    def failed(exc: Exception) -> tuple:
        try:
            return ("error", pickle.dumps(lowlevel.keep_traceback(exc), 5))
        except Exception:
            return ("remote", f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc),
                    "".join(traceback.format_exception(exc)))


class _AsyncHost(_Host):
    """The async actor of an async Worker: each call is a task of the
    actor's event loop, up to the actor's ``max_concurrency`` at once (a
    session's commands come one at a time: its stand-in orders them). A call
    ``ray.cancel`` cancels sees CancelledError where it awaits."""

    async def start(self, cls: type[Worker], args: tuple, kwargs: dict) -> tuple:
        import ray

        self.user = cls.__new__(cls)
        outcome = await self.acall(self.user.init, args, kwargs)
        if outcome[0] != "ok":
            return outcome
        context = ray.get_runtime_context()
        return ("ok", (context.get_actor_id(), context.get_node_id(), os.getpid()))

    async def run(self, request: tuple) -> tuple:  # type: ignore[override]
        try:
            method, session, args, kwargs = self.command(request)
        except AttributeError as exc:
            return self.failed(exc)
        return await self.acall(method, (session, *args), kwargs)

    async def function(self, fn: Any, args: tuple, kwargs: dict) -> tuple:  # type: ignore
        return await self.acall(fn, args, kwargs)

    async def health(self) -> tuple:  # type: ignore[override]
        return await self.acall(self.user.health_check, (), {})

    async def terminate(self, reason: Any) -> tuple:  # type: ignore[override]
        return await self.acall(self.user.terminate, (reason,), {})

    async def end(self, sid: Any, generation: int) -> None:  # type: ignore[override]
        _Host.end(self, sid, generation)

    async def watch(self) -> None:  # type: ignore[override]
        await asyncio.get_running_loop().create_future()  # never set: ends with the actor

    @classmethod
    async def acall(cls, fn: Any, args: tuple, kwargs: dict) -> tuple:
        try:
            value = fn(*args, **kwargs)
            return ("ok", await value if inspect.isawaitable(value) else value)
        except Exception as exc:  # not CancelledError: a cancelled call ends cancelled
            return cls.failed(exc)
