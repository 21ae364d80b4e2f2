"""otpy: Erlang/OTP's process model and supervision on real OS processes.

The public API. Everything else in the package is private.
"""

from .behaviours.child import (
    AlreadyPresent,
    ChildInfo,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    MaxChildren,
    SupervisorError,
)
from .behaviours.gen_server import (
    IGNORE,
    NOREPLY,
    AlreadyStarted,
    From,
    GenServer,
    StartError,
    Stop,
    call,
    cast,
    reply,
    stop,
)
from .behaviours.dynamic_supervisor import DynamicSupervisor
from .behaviours.supervisor import Supervisor
from .runtime.api import (
    cancel_timer,
    demonitor,
    exit,
    is_alive,
    link,
    make_ref,
    monitor,
    process_info,
    processes,
    receive,
    register,
    registered,
    self,
    send,
    send_after,
    spawn,
    spawn_link,
    spawn_monitor,
    trap_exit,
    unlink,
    unregister,
    whereis,
)
from .runtime.log import configure_logging
from .runtime.errors import (
    AlreadyRegistered,
    Exited,
    NoProc,
    OtpyError,
    ProcessExit,
    RuntimeGone,
    SerializationError,
    Timeout,
)
from .runtime.reasons import RemoteError
from .runtime.terms import BadMessage, Down, Exit, Pid, Ref

__all__ = [
    "AlreadyPresent", "ChildInfo", "ChildNotFound", "ChildRunning", "ChildSpec", "MaxChildren",
    "DynamicSupervisor", "Supervisor", "SupervisorError",
    "IGNORE", "NOREPLY", "AlreadyStarted", "From", "GenServer", "StartError", "Stop", "call",
    "cast", "reply", "stop",
    "AlreadyRegistered", "BadMessage", "Down", "Exit", "Exited", "NoProc", "OtpyError", "Pid",
    "ProcessExit", "Ref", "RemoteError", "RuntimeGone", "SerializationError", "Timeout",
    "cancel_timer", "configure_logging", "demonitor", "exit", "is_alive", "link", "make_ref", "monitor",
    "process_info", "processes", "receive", "register", "registered", "self", "send",
    "send_after", "spawn", "spawn_link", "spawn_monitor", "trap_exit", "unlink", "unregister",
    "whereis",
]
__version__ = "0.1.0"
