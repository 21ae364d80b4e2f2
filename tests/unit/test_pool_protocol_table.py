"""The pool's protocol table (otpy_pool._protocol) is whole: every message
shape has one entry, and the server and the worker have a handler method
for exactly the messages the table says they receive (an unknown one is answered with an
error: tests/integration/pool/test_pool_unknown_requests.py)."""

from __future__ import annotations

import otpy_pool._protocol as protocol
from otpy_pool._pool_server import PoolServer
from otpy_pool._worker import WorkerProcess


def test_every_message_has_one_entry_saying_who_sends_it_and_when():
    entries = [(m.tag, m.receiver) for m in protocol.TABLE]
    assert len(entries) == len(set(entries))
    for message in protocol.TABLE:
        assert message.sender in ("caller", "server", "worker", "timer"), message
        assert message.receiver in ("server", "worker"), message
        assert message.kind in ("call", "cast", "info"), message
        assert message.when, message
    # every tag constant of the module is in the table
    tags = {value for name, value in vars(protocol).items()
            if name.isupper() and isinstance(value, str) and name not in (
                "OK", "ERROR", "UNBOUND", "MOVED", "LOST", "NOT_RUN", "RETURN", "REPLACE", "DEAD",
                "FUNCTION", "UNKNOWN")}
    assert tags == {m.tag for m in protocol.TABLE}


def handlers(cls: type) -> set[str]:
    return {name for name in dir(cls) if name.startswith(("_op_", "_cast_", "_info_"))}


def test_the_server_handles_what_the_table_says_it_receives():
    assert handlers(PoolServer) == protocol.handlers("server")


def test_the_worker_handles_what_the_table_says_it_receives():
    assert handlers(WorkerProcess) == protocol.handlers("worker")


def test_the_async_worker_handles_every_cast_in_its_loop():
    """Its loop hands a cast to ``_acast_<tag>`` (calls go through dispatch,
    as the sync worker's: the same ``_op_`` methods)."""
    from otpy_pool._async_worker import AsyncWorkerProcess

    casts = {name.replace("_cast_", "_acast_") for name in protocol.handlers("worker")
             if name.startswith("_cast_")}
    assert {name for name in dir(AsyncWorkerProcess) if name.startswith("_acast_")} == casts
