"""What a node publishes for observers, and how to read it (used by otpy.observer).

A node's zygote keeps two files that any process of the same user can open
through /proc/<zygote>/fd: the status table (one slot per process: state and
mailbox length, updated by the processes themselves) and the page (a JSON
snapshot of the node's tables, written on request under a sequence lock).
Each process on the page is a ``PageRow``: ``otpy.ProcessRow`` with serial
numbers for pids, plus ``program``, ``exiting`` and ``meta``. The page also carries the node's
counts (``counts``: spawns, exits by ``EXIT_CLASSES``, and the events
processes ``tally``); ``process_label`` is what a process is called where no
pid may be shown.
"""

from .._runtime.observe import PAGE_NAME, REQUEST_SIGNAL, page_seq, read_page
from .._runtime.reasons import EXIT_CLASSES, exit_class
from .._runtime.rows import PageRow, process_label
from .._runtime.status import NAME as STATUS_NAME
from .._runtime.status import STATE_NAMES, StatusTable

__all__ = ["EXIT_CLASSES", "PAGE_NAME", "PageRow", "REQUEST_SIGNAL", "STATE_NAMES", "STATUS_NAME",
           "StatusTable",
           "exit_class", "page_seq", "process_label", "read_page"]
