"""Every message between the pool's callers, its server and its workers.

One table, so that a message's shape, who sends it and when are written in
one place. Each receiver handles a message with the method named after its
tag: ``_op_<tag>`` for a call (through ``lowlevel.dispatch``, as every
otpy_pool server), ``_cast_<tag>`` for a cast, ``_info_<tag>`` for one of the
server's timers; ``tests/unit/test_pool_protocol_table.py`` checks that each
receiver has exactly the handlers of the messages the table says it gets.
A call is answered ``(OK, value)`` or ``(ERROR, exception)``, an unknown one
with ``(ERROR, ValueError)``, never with nothing; a cast or a timer message
nobody knows is logged and dropped (there is no one to answer).

The tag strings are private to the pool: only its own modules send them.
"""

from __future__ import annotations

from typing import NamedTuple


class Message(NamedTuple):
    """One message shape: ``tag`` is its first element, ``args`` the rest."""

    tag: str
    sender: str  # "caller" (a Pool handle), "server", "worker", or "timer" (the server's own)
    receiver: str  # "server" or "worker"
    kind: str  # "call" (answered), "cast" (one way), "info" (a timer's message)
    args: str
    when: str


# Answers: every call to the server, and a command's run, answer one of these.
OK, ERROR = "ok", "error"  # (OK, value) / (ERROR, exception)
UNBOUND = "unbound"  # (UNBOUND,): the worker does not hold the session; ask the server to bind
MOVED = "moved"  # (MOVED,): the worker is retiring and never ran it; bind again, naming it
LOST = "lost"  # (LOST, cause): the session's replay failed; this command reports it
NOT_RUN = "not_run"  # (NOT_RUN,): RUN_ANY's worker died before it started the command

# ---- caller -> server ------------------------------------------------------------------------
CHECKOUT = "checkout"
RUN_ANY = "run_any"
BIND = "bind"
RAN = "ran"
DEADLINE = "deadline"
END_SESSION = "end_session"
STATUS = "status"
WORKERS = "workers"
WORKER_OF = "worker_of"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
SETTINGS = "settings"
FIRST_START = "first_start"
CLAIMS = "claims"
CHECKIN = "checkin"
CANCEL = "cancel"
# CHECKIN's ``how``: the holder returns the worker, wants it replaced (its
# state is unknown), or saw it die (the server takes its Down, never reuses it)
RETURN, REPLACE, DEAD = "return", "replace", "dead"

# ---- caller -> worker --------------------------------------------------------------------------
RUN = "run"
AFTER_RUNNING = "after_running"

# ---- server -> worker ---------------------------------------------------------------------------
RUN_HANDED = "run_handed"
COUNTS_FD = "counts_fd"
ADOPT = "adopt"
BIND_SESSION = "bind_session"
END = "end"
HEALTH = "health"
RELEASE = "release"
LEAVE = "leave"

# ---- worker -> server ---------------------------------------------------------------------------
LOGGED = "logged"
WORN = "worn"
REPLAYED = "replayed"
HEALTHY = "healthy"
TIMED_OUT = "timed_out"

# ---- the server's timers (to itself) ------------------------------------------------------------
EXPIRE = "expire"
RETRY_START = "retry_start"
FILL = "fill"
OVERFLOW_IDLE = "overflow_idle"
HEALTH_TICK = "health_tick"
HEALTH_LATE = "health_late"
RUN_DEADLINE = "run_deadline"
LABEL = "label"
CLAIM_HELD = "claim_held"

# The built-in command the executor runs plain functions with.
FUNCTION = "otpy_pool.function"
# The exit reason of a worker the pool retired (it left once idle): clean for
# supervisors, and it tells a caller whose command reached the worker too late
# that the command never ran. Workers' ``terminate`` sees it (documented).
RETIRED = ("shutdown", "otpy_pool.retired")
# RAN's answer when the server cannot tell which command a dead worker ran.
UNKNOWN = "unknown"


TABLE: tuple[Message, ...] = (
    Message(CHECKOUT, "caller", "server", "call", "token, wait",
            "a session-less command, execute_many or checkout() needs a worker of its own: "
            "answered with one (held under token), or once one is free (at most wait s), "
            "or PoolTimeout / PoolOverloaded / PoolUnavailable"),
    Message(RUN_ANY, "caller", "server", "call", "wait, timeout, command, args, kwargs",
            "a session-less command (execute without a session) that found no worker free "
            "to claim (see _claims): the server takes a free "
            "worker for it as CHECKOUT would (under the call's ref) and hands it the command "
            "(RUN_HANDED), which answers the caller itself; or the server answers PoolTimeout "
            "/ PoolOverloaded / PoolUnavailable, CommandTimeout past timeout, WorkerCrashed "
            "if the worker died running it, (NOT_RUN,) if it died before"),
    Message(BIND, "caller", "server", "call", "session, stale",
            "the session has no cached worker, or its worker did not hold it (stale: that "
            "worker, whose Down is taken first): answered with the session's worker, to "
            "which BIND_SESSION was cast first"),
    Message(RAN, "caller", "server", "call", "worker",
            "a command met its worker's death: the running command's ref "
            "(origin serial, number), None, or UNKNOWN; the worker's Down is taken first"),
    Message(DEADLINE, "caller", "server", "call", "worker, token",
            "a command ran past its timeout: the server kills the worker and answers "
            "once its Down is taken"),
    Message(END_SESSION, "caller", "server", "call", "session", "end_session(), session()"),
    Message(STATUS, "caller", "server", "call", "", "status()"),
    Message(WORKERS, "caller", "server", "call", "", "workers()"),
    Message(WORKER_OF, "caller", "server", "call", "session", "worker_of()"),
    Message(SUBSCRIBE, "caller", "server", "call", "pid", "subscribe()"),
    Message(UNSUBSCRIBE, "caller", "server", "call", "pid", "unsubscribe()"),
    Message(SETTINGS, "caller", "server", "call", "",
            "once per process and pool: the defaults a handle needs (a Settings)"),
    Message(CLAIMS, "caller", "server", "call", "",
            "once per process and server: where its claims page is (a ClaimsAddress), or "
            "None (a pool of async workers has none); see _claims"),
    Message(FIRST_START, "caller", "server", "call", "",
            "start_link, once: why the first workers could not start (None: they did)"),
    Message(CHECKIN, "caller", "server", "cast", "token, how",
            "a checkout ends: how is RETURN, REPLACE or DEAD (a worker that ran a "
            "RUN_HANDED sends it too: RETURN)"),
    Message(CANCEL, "caller", "server", "cast", "token",
            "a caller gave up waiting for CHECKOUT's answer (its own timer)"),
    Message(RUN, "caller", "worker", "call", "session, command, args, kwargs[, deadline]",
            "every command, with the caller's own ref (the worker's counts page names the "
            "ones running): answered (OK, value), (ERROR, exc), (UNBOUND,), (MOVED,) or "
            "(LOST, cause); to an async worker with its deadline (time.monotonic(), or "
            "None), past which it is cancelled (answered CommandTimeout)"),
    Message(AFTER_RUNNING, "caller", "worker", "call", "",
            "a caller gave up waiting for a command on a worker it claimed: answered once "
            "the worker has ended the commands before it, when the claim ends (see _claims)"),
    Message(RUN_HANDED, "server", "worker", "call", "token, command, args, kwargs",
            "RUN_ANY's command, sent in the caller's call (its From): run as a session-less "
            "RUN, answered to the caller, then CHECKIN (token, RETURN) cast to the server"),
    Message(COUNTS_FD, "server", "worker", "call", "",
            "the server starts tracking a worker: the fd of its counts page, to map"),
    Message(ADOPT, "server", "worker", "call", "server",
            "a new server takes over: the worker's sessions and their replay logs"),
    Message(BIND_SESSION, "server", "worker", "cast", "session, replay_log",
            "before BIND's answer, so it reaches the worker before the caller's command: "
            "replay the log (if any), then hold the session"),
    Message(END, "server", "worker", "cast", "session", "END_SESSION: drop the session"),
    Message(HEALTH, "server", "worker", "cast", "token",
            "every health_interval, to an idle worker: answered with HEALTHY"),
    Message(RELEASE, "server", "worker", "cast", "",
            "the worker is retired: drop every session (they are re-bound elsewhere)"),
    Message(LEAVE, "server", "worker", "cast", "",
            "a retired worker is idle: answer the RUNs already queued with MOVED, then "
            "stop with RETIRED"),
    Message(LOGGED, "worker", "server", "cast", "worker, session, entry",
            "a replay=True command succeeded, before its reply: the session's log grows"),
    Message(WORN, "worker", "server", "cast", "worker",
            "once, past max_commands or max_memory: retire it when idle"),
    Message(REPLAYED, "worker", "server", "cast", "worker, session, cause",
            "after BIND_SESSION's replay: cause None (recovered) or the failure's text"),
    Message(HEALTHY, "worker", "server", "cast", "worker, token, healthy, detail",
            "HEALTH's answer"),
    Message(TIMED_OUT, "worker", "server", "cast", "worker",
            "an async worker cancelled a command past its deadline, and it ended within "
            "the grace: a timeout counted, the worker serves on"),
    Message(EXPIRE, "timer", "server", "info", "token", "a queued CHECKOUT's wait is over"),
    Message(RETRY_START, "timer", "server", "info", "",
            "the backoff after a failed start is over: start what is owed"),
    Message(FILL, "timer", "server", "info", "",
            "FILL_GRACE after a death: start its replacement"),
    Message(OVERFLOW_IDLE, "timer", "server", "info", "worker, stamp",
            "an overflow worker returned overflow_idle s ago: retire it if still idle since"),
    Message(HEALTH_TICK, "timer", "server", "info", "", "every health_interval"),
    Message(HEALTH_LATE, "timer", "server", "info", "worker, token",
            "health_timeout after a HEALTH: no answer yet"),
    Message(RUN_DEADLINE, "timer", "server", "info", "",
            "the earliest deadline of the handed commands (one timer for all): kill the "
            "workers still running one past its timeout"),
    Message(CLAIM_HELD, "timer", "server", "info", "slot",
            "from a thread of the server's own: the lock of a slot a caller held (claimed) "
            "is the server's now: its caller released it, or died"),
    Message(LABEL, "timer", "server", "info", "",
            "the observer's label changed less than LABEL_EVERY after the last write: "
            "written now"),
)


def handlers(receiver: str) -> set[str]:
    """The handler methods ``receiver`` must have: one per message it gets."""
    prefix = {"call": "_op_", "cast": "_cast_", "info": "_info_"}
    return {prefix[m.kind] + m.tag for m in TABLE if m.receiver == receiver}
