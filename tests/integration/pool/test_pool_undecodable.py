"""A command result the caller cannot decode ends the call at once with
otpy.SerializationError naming the type (issue 21, item 1, the pool's side),
through every path a result takes: execute (session and session-less, as a
value and raised), execute_many (replies taken from the mailbox), a
checkout, and the executor's futures. The worker carries on."""

from __future__ import annotations

import otpy
import pytest
from otpy_pool import Pool

from helpers import DEADLINE
from pool_workers import Notes, TwoArgError, make_undecodable

pytestmark = pytest.mark.layer("full")  # real pool workers

# what the error names for each kind: the type, or (where tblib rebuilds an
# exception and the type is behind its unpickler) the cause
KINDS = {"two_arg": "TwoArgError", "ghost": "otpy_ghost_module.Ghost",
         "reduce_raises": "exploded while unpickled", "reduce_exits": "SystemExit"}


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request):
    return request.param


def undecodable(kind):
    """What the error names, for ``kind``."""
    return pytest.raises(otpy.SerializationError, match=KINDS[kind])


def test_execute(kind):
    pool = Pool.start_link(Notes, size=1)
    worker = pool.workers()[0]
    for how in (kind, kind + "_raised"):
        if how == "two_arg_raised":  # a raised exception travels with tblib, which rebuilds it
            with pytest.raises(TwoArgError):
                pool.execute("undecodable", how, session="s", timeout=DEADLINE)
            continue
        with undecodable(kind) as info:
            pool.execute("undecodable", how, session="s", timeout=DEADLINE)
        assert repr(worker) in str(info.value)  # the sender
        with undecodable(kind):
            pool.execute("undecodable", how, timeout=DEADLINE)
    assert pool.execute("ping", session="s") == ("pong", "notes", "s")
    assert pool.workers() == [worker]  # it carried on
    assert pool.status().busy == 0
    pool.stop()


def test_execute_many(kind):
    pool = Pool.start_link(Notes, size=1)
    for session in ("s", None):
        out = pool.execute_many("undecodable", [(kind,), ("ghost",)], session=session,
                                timeout=DEADLINE, return_exceptions=True)
        assert all(isinstance(e, otpy.SerializationError) for e in out), out
        assert KINDS[kind] in str(out[0]) and "otpy_ghost_module" in str(out[1])
        with undecodable(kind):
            pool.execute_many("undecodable", [(kind,)], session=session, timeout=DEADLINE)
    assert pool.execute_many("echo", [(1,)], session="s") == [((1,), {})]
    pool.stop()


def test_checkout_and_executor(kind):
    pool = Pool.start_link(Notes, size=1)
    with pool.checkout() as held:
        with undecodable(kind):
            held.execute("undecodable", kind, timeout=DEADLINE)
        assert held.execute("ping") == ("pong", "notes", None)
    with pool.executor() as executor:
        with undecodable(kind):
            executor.submit(make_undecodable, kind).result(DEADLINE)
        assert executor.submit(abs, -1).result(DEADLINE) == 1
    pool.stop()
