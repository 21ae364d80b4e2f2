"""otpy.lowlevel: the extension API that behaviours are written with.

``otpy`` is the friendly surface (processes, GenServer, supervisors).
Underneath it, this is what a *new* behaviour needs, documented and stable:
otpy's own GenServer, Supervisor and DynamicSupervisor are written with
nothing but ``otpy`` and this module, and so is ``otpy_pool``. See
docs/lowlevel.md.

- timeouts: :func:`check_timeout` (the one rule every timeout, deadline and
  interval follows: None and ``math.inf`` mean no limit).
- spawning: :func:`spawn_opt` (a link and a monitor made with the spawn, in
  one request).
- calls: :func:`call` / :func:`reply` / :class:`From` (the call convention),
  :func:`request` (wait for a reply or the callee's death, with your own
  message format; :func:`drop_late_reply` after it if another process may
  answer too), :func:`send_request` (a request's send, its reply taken
  later by ``PendingReply.wait`` in any thread or :func:`areply` in any
  loop), :func:`ask` / :func:`dispatch` (an operation whose
  server-side error is raised in the caller), :func:`resolve`; for asyncio
  :func:`acall`, :func:`aask`, :func:`arequest`, :func:`asend` (a task waits, not a thread).
- stopping: :func:`await_down`, :func:`stop_process` (exit signal, bounded
  wait, kill), :func:`kill` (an untrappable kill that records a reason), and
  the supervisor's shutdown protocol (:func:`shutdown_child`,
  :func:`begin_shutdown` / :func:`finish_shutdown`, :func:`deadline_for`).
- supervision: :class:`ChildSpec`, :func:`is_clean`, :func:`restart_needed`,
  :class:`RestartIntensity` (N events in T seconds).
- observing: :func:`annotate` (what the observer shows for a process),
  :func:`tally` (count an event in the node's tables, for otpy.metrics),
  :func:`logger`, :func:`describe_reason`, :func:`traceback_text`,
  :func:`keep_traceback` (an exception that travels with its traceback),
  :func:`sendable_exception` (one that can be sent, or its RemoteError stand-in),
  :func:`process_name`.
- the node: :func:`start`, :func:`shutdown`, :func:`node_running`,
  :func:`zygote_os_pid`, namespaces
  (:func:`current_namespace`, :func:`enter_namespace`, :func:`leave_namespace`,
  :func:`processes_in`, :func:`registered_in`, :func:`unregister_in`),
  :func:`flush`, :func:`is_trapping`; logs for tools that capture them
  (:func:`parse_log_lines`, :func:`render_log_event`, :func:`reset_logging`).
- messages that could not be decoded: :func:`salvage` (what can be read of a
  BadMessage), :func:`reply_error` (answer a call with an error the caller
  raises), :func:`failed_reply` (the error a reply read from the mailbox stands for).
- failure injection: :func:`inject_fault` / :func:`heal_fault` (faults a
  process applies to itself: slow, partition, corrupt, memory, fds).
"""

from .._runtime.api import annotate, asend, spawn_opt, tally
from .._runtime.timeouts import check_timeout
from ._bad_messages import Undecodable, failed_reply, reply_error, salvage
from ._calls import (CALL, DEFAULT_TIMEOUT, NOT_YET, From, PendingReply, aask, acall, areply,
                     arequest, ask, call, dispatch, drop_late_reply, reply, request, resolve,
                     send_request)
from ._child_spec import RESTARTS, TYPES, ChildSpec, Restart, Shutdown, is_clean, restart_needed
from ._intensity import RestartIntensity
from ._node import (LOG_LEVELS, current_namespace, describe_reason, enter_namespace,
                    is_trapping, log_enabled, keep_traceback, leave_namespace, logger, node_running,
                    sendable_exception,
                    parse_log_lines,
                    process_name, processes_in, registered_in, render_log_event, reset_logging,
                    shutdown, start, traceback_text, unregister_in, zygote_os_pid,
                    keeper_os_pid)
from ._stopping import (await_down, begin_shutdown, deadline_for, finish_shutdown, flush,
                        kill, shutdown_child, stop_process)
from ._faults import FAULT_KINDS, FaultError, heal_fault, inject_fault

__all__ = [
    "check_timeout",
    "CALL", "DEFAULT_TIMEOUT", "From", "aask", "acall", "arequest", "ask", "call", "dispatch",
    "drop_late_reply", "reply", "request", "resolve", "NOT_YET", "PendingReply", "areply",
    "send_request",
    "RESTARTS", "TYPES", "ChildSpec", "Restart", "Shutdown", "is_clean", "restart_needed",
    "RestartIntensity",
    "annotate", "asend", "spawn_opt", "tally", "current_namespace", "describe_reason",
    "enter_namespace", "is_trapping",
    "leave_namespace", "node_running", "processes_in", "process_name", "registered_in", "shutdown",
    "start", "unregister_in", "zygote_os_pid", "keeper_os_pid",
    "LOG_LEVELS", "log_enabled", "logger", "parse_log_lines", "render_log_event", "reset_logging",
    "traceback_text",
    "await_down", "begin_shutdown", "deadline_for", "finish_shutdown", "flush", "kill",
    "shutdown_child", "stop_process",
    "Undecodable", "failed_reply", "reply_error", "salvage", "keep_traceback",
    "sendable_exception",
    "FAULT_KINDS", "FaultError", "heal_fault", "inject_fault",
]
