"""GenServer: a process that serves calls and casts, holding state between them.

The callback contract (all optional except what you use)::

    init(*args, **kwargs)          runs in the server process before start returns;
                                   return IGNORE to not start, raise to fail the start
    handle_call(request, caller)   return the reply; NOREPLY to answer later with
                                   reply(caller, value); Stop(reason, reply=...) to stop
    handle_cast(request)           return None, or Stop(reason)
    handle_info(message)           anything else, Exit and Down included; None or Stop
                                   (a call the server could not decode never gets
                                   here: it is logged and answered with an error)
    terminate(reason)              on stop, on an exception in a callback, and on an
                                   exit signal from the parent when the server traps exits

The server loop, as a state machine::

    starting --init ok--> serving --Stop / stop() / exception / parent Exit--> terminating
        |                    ^  |                                                   |
        +--IGNORE/raise--> gone  +--call/cast/info: callback, back to serving       +--> gone

Messages on the wire: ("$call", (pid, ref), request), ("$cast", request),
("$stop", (pid, ref), reason), and replies ("$reply", ref, value).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

# The process API comes from otpy's public surface: otpy/__init__.py binds it
# before it imports the behaviours.
from .. import (AlreadyRegistered, BadMessage, Down, Exit, Exited, NoProc, OtpyError, Pid,
                ProcessExit, Ref, SerializationError, Timeout, demonitor, monitor, receive,
                send, unlink)
from .. import exit as exit_signal
from .. import self as self_pid
from .. import lowlevel
from ..lowlevel import CALL, DEFAULT_TIMEOUT, ChildSpec, From, Restart, Shutdown, call, reply

CAST = "$cast"
STOP = "$stop"
START_ACK = "$start_ack"


class StartError(OtpyError):
    """A process could not be started; ``reason`` says why (the init exception, say)."""

    def __init__(self, reason: Any, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"start failed: {reason!r}")

    def __reduce__(self):
        return (type(self), (self.reason, str(self)))


class AlreadyStarted(OtpyError):
    """A server is already registered under the name; ``pid`` is the existing one."""

    def __init__(self, name: str, pid: Pid, message: str | None = None) -> None:
        self.name = name
        self.pid = pid
        super().__init__(message or f"{name!r} is already started as {pid!r}")

    def __reduce__(self):
        return (type(self), (self.name, self.pid, str(self)))


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"otpy.{self._name}"

    def __reduce__(self):
        return self._name  # unpickles to the module-level singleton


IGNORE = _Marker("IGNORE")
NOREPLY = _Marker("NOREPLY")
_NO_REPLY_GIVEN = _Marker("_NO_REPLY_GIVEN")


@dataclasses.dataclass(frozen=True)
class Stop:
    """Returned by a callback to stop the server with ``reason`` (replying first, if given)."""

    reason: Any = "normal"
    reply: Any = _NO_REPLY_GIVEN


def cast(server: Pid | str, request: Any) -> None:
    """Send ``request`` without waiting. Like OTP's cast, it never fails: a
    dead server or an unknown name drops the request."""
    try:
        send(server, (CAST, request))
    except NoProc:
        pass


def stop(server: Pid | str, reason: Any = "normal",
         timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """Stop a server: its terminate(reason) runs, and this returns once it is gone."""
    timeout = lowlevel.check_timeout(timeout, "stop timeout")
    pid = lowlevel.resolve(server)
    mref = monitor(pid)
    me = self_pid()
    ref = Ref.make(me)
    try:
        try:
            lowlevel.request(pid, (STOP, (me, ref), reason), ref, timeout)
        except NoProc:
            raise
        except Exited:
            pass  # it died on its way out; the Down below says it is gone
        lowlevel.await_down(mref, timeout)
    except (NoProc, Timeout):  # no Down may turn up later as a stray message
        demonitor(mref, flush=True)
        raise


class GenServer:
    """Subclass and override the callbacks; start with ``start_link`` or ``start``."""

    #: how long start waits for init, unless start_link(timeout=...) says otherwise
    start_timeout: ClassVar[float] = DEFAULT_TIMEOUT

    # ---- callbacks (defaults) ---------------------------------------------------

    def init(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def handle_call(self, request: Any, caller: From) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle calls: {request!r}")

    def handle_cast(self, request: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not handle casts: {request!r}")

    def handle_info(self, message: Any) -> Any:
        return None  # OTP logs and drops unexpected messages; so do we (quietly)

    def terminate(self, reason: Any) -> None:
        return None

    # ---- starting -----------------------------------------------------------------

    @classmethod
    def start_link(cls, *args: Any, name: str | None = None, timeout: float | None = None,
                   **kwargs: Any) -> Pid | None:
        """Start a server linked to the caller; returns once ``init`` has finished."""
        return _start(cls, args, kwargs, name, timeout, link=True)

    @classmethod
    def start(cls, *args: Any, name: str | None = None, timeout: float | None = None,
              **kwargs: Any) -> Pid | None:
        """As start_link, without the link."""
        return _start(cls, args, kwargs, name, timeout, link=False)

    @classmethod
    def child_spec(cls, *args: Any, id: Any = None, restart: Restart = "permanent",
                   shutdown: Shutdown = 5.0, name: str | None = None, **kwargs: Any) -> ChildSpec:
        """A ChildSpec that starts this server with ``start_link(*args, name=..., **kwargs)``."""
        if name is not None:
            kwargs["name"] = name
        return ChildSpec(id if id is not None else (name or cls.__qualname__), cls.start_link,
                         args=args, kwargs=kwargs, restart=restart, shutdown=shutdown,
                         type="worker")


def _start(cls: type, args: tuple, kwargs: dict, name: str | None, timeout: float | None,
           link: bool) -> Pid | None:
    if not (isinstance(cls, type) and issubclass(cls, GenServer)):
        raise TypeError(f"{cls!r} is not a GenServer subclass")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"a server name must be a non-empty str, not {name!r}")
    timeout = lowlevel.check_timeout(cls.start_timeout if timeout is None else timeout,
                                     "start timeout")
    me = self_pid()
    ref = Ref.make(me)
    # spawned, linked (start_link), monitored and named in one request to the
    # zygote: a taken name starts no process at all
    try:
        pid, mref = lowlevel.spawn_opt(_serve, (cls, args, kwargs, me, ref, link), link=link,
                                       monitor=True, name=name)
    except AlreadyRegistered as exc:
        raise AlreadyStarted(str(name), exc.pid) from None
    try:
        ack = receive(
            timeout=timeout,
            match=lambda m: (type(m) is tuple and len(m) == 3 and m[0] == START_ACK and m[1] == ref)
            or (type(m) is Down and m.ref == mref),
        )
    except Timeout:
        if link:  # the caller hears of it as a StartError, not as the exit signal "killed"
            unlink(pid)
        exit_signal(pid, "kill")
        lowlevel.await_down(mref, DEFAULT_TIMEOUT * 2)
        lowlevel.flush(lambda m: (type(m) is Exit and m.pid == pid)
                       or (type(m) is tuple and len(m) == 3 and m[0] == START_ACK and m[1] == ref))
        raise StartError("timeout",
                         f"{cls.__qualname__} did not finish init within {timeout}s") from None
    if type(ack) is Down:
        raise StartError(ack.reason, f"{cls.__qualname__} died during init: {ack.reason!r}")
    outcome, detail = ack[2]
    if outcome == "ok":
        demonitor(mref, flush=True)
        return pid
    # The server is on its way out (unlinked first, so no Exit reaches us);
    # wait until it is gone, so its name is free when we return.
    lowlevel.await_down(mref, DEFAULT_TIMEOUT * 2)
    if outcome == "ignore":
        return None
    if isinstance(detail, StartError):
        raise detail  # a supervisor's child failed: that error already names it
    raise StartError(detail, f"{cls.__qualname__}.init failed: {detail!r}")


# ---- the server process ---------------------------------------------------------------

def _serve(cls: type[GenServer], args: tuple, kwargs: dict, parent: Pid, ref: Ref,
           linked: bool) -> None:
    def ack(outcome: str, detail: Any = None) -> None:
        send(parent, (START_ACK, ref, (outcome, detail)))

    lowlevel.annotate(self_pid(), behaviour=cls.__qualname__)  # for the observer

    def give_up(outcome: str, detail: Any, reason: Any) -> None:
        if linked:
            unlink(parent)  # the starter hears of it through the ack, not an Exit
        ack(outcome, detail)
        raise ProcessExit(reason)

    server = cls.__new__(cls)
    try:
        result = server.init(*args, **kwargs)
    except ProcessExit as exc:
        give_up("error", exc.reason, exc.reason)
    except Exception as exc:
        give_up("error", lowlevel.keep_traceback(exc), exc)  # the starter logs the traceback
    if result is IGNORE:
        give_up("ignore", None, "normal")
    ack("ok")
    _loop(server, parent)


def _loop(server: GenServer, parent: Pid) -> None:
    # Each message is handled in a call of its own, so that once it returns
    # nothing here still refers to the message, the request or the reply: a
    # large argument is freed when its callback returns, not at the next message.
    while True:
        try:
            _handle(server, receive(), parent)
        except ProcessExit:
            raise
        except BaseException as exc:
            try:
                server.terminate(exc)
            finally:
                raise exc


def _handle(server: GenServer, message: Any, parent: Pid) -> None:
    """Run the callback ``message`` is for."""
    kind = type(message)
    if kind is tuple and message and message[0] == CALL:
        _, caller, request = message
        caller = From(*caller)
        result = server.handle_call(request, caller)
        if result is NOREPLY:
            return
        if type(result) is Stop:
            if result.reply is not _NO_REPLY_GIVEN:
                reply(caller, result.reply)
            _terminate(server, result.reason)
        reply(caller, result)
    elif kind is tuple and message and message[0] == CAST:
        result = server.handle_cast(message[1])
        if type(result) is Stop:
            _terminate(server, result.reason)
    elif kind is tuple and message and message[0] == STOP:
        _, caller, reason = message
        server.terminate(reason)
        reply(From(*caller), "ok")
        raise ProcessExit(reason)
    elif kind is Exit and message.pid == parent and lowlevel.is_trapping():
        _terminate(server, message.reason)
    elif kind is BadMessage and _undecodable_call(server, message):
        return
    else:
        result = server.handle_info(message)
        if type(result) is Stop:
            _terminate(server, result.reason)


def _undecodable_call(server: GenServer, message: BadMessage) -> bool:
    """A message the server could not decode is logged; if it is a call, the
    caller is answered with a SerializationError naming what could not be
    decoded (instead of waiting out its timeout), and True is returned."""
    term, problems = lowlevel.salvage(message)
    what = "; ".join(problems) or message.error
    is_call = (type(term) is tuple and len(term) == 3 and term[0] == CALL
               and type(term[1]) is tuple and len(term[1]) == 2
               and type(term[1][0]) is Pid and type(term[1][1]) is Ref)
    lowlevel.logger().error("undecodable message", server=type(server).__qualname__,
                            call=is_call, undecodable=what)
    if not is_call:
        return False
    lowlevel.reply_error(From(*term[1]), SerializationError(
        f"{type(server).__qualname__} could not decode the request: {what}"))
    return True


def _terminate(server: GenServer, reason: Any) -> None:
    server.terminate(reason)
    raise ProcessExit(reason)
