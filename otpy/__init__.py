"""otpy: Erlang/OTP's process model and supervision on real OS processes.

The public API. Everything else in the package is private.
"""

# Order matters: the process API is bound first, then otpy.lowlevel, then the
# behaviours, which import both from here.
from ._runtime.api import (
    areceive,
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
from ._runtime.log import configure_logging
from ._runtime.errors import (
    AlreadyRegistered,
    Exited,
    NoProc,
    OtpyError,
    ProcessExit,
    RuntimeGone,
    SerializationError,
    Timeout,
)
from ._runtime.reasons import RemoteError
from ._runtime.rows import ProcessRow
from ._runtime.terms import BadMessage, Down, Exit, Pid, Ref

from . import lowlevel
from .lowlevel import ChildSpec, From, acall, call, reply
from .behaviours._supervision import (
    AlreadyPresent,
    ChildInfo,
    ChildNotFound,
    ChildRunning,
    MaxChildren,
    SupervisorError,
)
from .behaviours._gen_server import (
    IGNORE,
    NOREPLY,
    AlreadyStarted,
    GenServer,
    StartError,
    Stop,
    cast,
    stop,
)
from .behaviours._dynamic_supervisor import DynamicSupervisor
from .behaviours._supervisor import Supervisor

__all__ = [
    "AlreadyPresent", "ChildInfo", "ChildNotFound", "ChildRunning", "ChildSpec", "MaxChildren",
    "DynamicSupervisor", "Supervisor", "SupervisorError",
    "IGNORE", "NOREPLY", "AlreadyStarted", "From", "GenServer", "StartError", "Stop", "acall",
    "areceive", "call",
    "cast", "reply", "stop",
    "AlreadyRegistered", "BadMessage", "Down", "Exit", "Exited", "NoProc", "OtpyError", "Pid",
    "ProcessExit", "ProcessRow", "Ref", "RemoteError", "RuntimeGone", "SerializationError",
    "Timeout",
    "cancel_timer", "configure_logging", "demonitor", "exit", "is_alive", "link", "make_ref",
    "monitor",
    "process_info", "processes", "receive", "register", "registered", "self", "send",
    "send_after", "spawn", "spawn_link", "spawn_monitor", "trap_exit", "unlink", "unregister",
    "whereis",
]
__version__ = "0.1.0"
