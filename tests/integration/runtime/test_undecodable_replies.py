"""What the receiver cannot decode never hangs a call, an exception keeps
its type however deep its traceback, and a server lets go of what it
handled (issue 21, items 1, 3 and 5)."""

from __future__ import annotations

import sys
import types

import pytest

import otpy
from otpy import lowlevel

import helpers
from helpers import DEADLINE


class TwoArgs(Exception):
    """Pickles, but cannot be rebuilt: pickle calls TwoArgs("a/b")."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def _refuse():
    raise ValueError("this object refuses to be rebuilt")


def _exit():
    raise SystemExit(3)


class Refuses:
    def __reduce__(self):
        return (_refuse, ())


class ExitsWhenRebuilt:
    def __reduce__(self):
        return (_exit, ())


def only_here():
    """An object of a class whose module exists only in the process that made it."""
    module = types.ModuleType("otpy_module_only_here")
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    return module.Thing()


ANSWERS = {
    "two_args": lambda: TwoArgs("a", "b"),
    "two_args_raised": lambda: ("error", TwoArgs("a", "b")),
    "missing_module": only_here,
    "refuses": Refuses,
    "exits": ExitsWhenRebuilt,
}


class Answers(otpy.GenServer):
    def handle_call(self, request, caller):
        if request == "ping":
            return "pong"
        return ANSWERS[request]()


def serve(cls, **spec):
    return helpers.CURRENT_TREE.start_child(cls.child_spec(**spec))


# ---- 1. a reply that cannot be decoded ends the call at once ------------------------

@pytest.mark.parametrize("answer, names", [
    ("two_args", "TwoArgs"),
    ("two_args_raised", "TwoArgs"),
    ("missing_module", "otpy_module_only_here"),
    ("refuses", "refuses to be rebuilt"),
    ("exits", "SystemExit"),
])
def test_a_reply_the_caller_cannot_decode_raises_serialization_error(answer, names):
    pid = serve(Answers)
    with pytest.raises(otpy.SerializationError) as info:
        otpy.call(pid, answer, timeout=None)  # no timeout: only the fix ends this call
    text = str(info.value)
    assert names in text and repr(pid) in text and "could not be decoded" in text
    assert otpy.call(pid, "ping") == "pong"  # the server, and this caller, carry on


def test_a_plain_message_that_cannot_be_decoded_is_a_bad_message_even_if_it_exits():
    me = otpy.self()
    otpy.send(me, ("tag", ExitsWhenRebuilt()))
    bad = otpy.receive(timeout=DEADLINE)
    assert isinstance(bad, otpy.BadMessage) and "SystemExit" in bad.error


def test_a_reply_to_nobody_that_cannot_be_decoded_stays_a_bad_message():
    """A frame that only looks like a reply (no call waits for its ref) is
    filed as any message: a reply tuple whose value failed, for the receiver."""
    me = otpy.self()
    otpy.send(me, ("$reply", otpy.make_ref(), Refuses()))
    got = otpy.receive(timeout=DEADLINE)
    assert got[0] == "$reply" and lowlevel.failed_reply(got[2], me) is not None


def exit_with_a_thing_only_here():
    raise otpy.ProcessExit(only_here())


def test_an_exit_reason_that_cannot_be_decoded_arrives_as_remote_error():
    _, ref = otpy.spawn_monitor(exit_with_a_thing_only_here)
    reason = helpers.expect_down(ref).reason
    assert isinstance(reason, otpy.RemoteError)
    assert reason.type_name == "otpy_module_only_here.Thing"
    assert "could not be decoded" in str(reason)


# ---- 3. an exception keeps its type however deep its traceback -------------------------

def deep(n):
    if n == 0:
        raise ValueError("deep down")
    deep(n - 1)


def recurse():
    recurse()


def test_a_deep_traceback_is_cut_and_the_exception_keeps_its_type():
    _, ref = otpy.spawn_monitor(deep, 400)
    reason = helpers.expect_down(ref).reason
    assert type(reason) is ValueError and str(reason) == "deep down"
    note = reason.__notes__[-1]
    assert "frames deep" in note and "were dropped" in note
    assert reason.__traceback__ is not None  # the innermost frames came along


def test_a_recursion_error_arrives_as_itself():
    _, ref = otpy.spawn_monitor(recurse)
    reason = helpers.expect_down(ref).reason
    assert type(reason) is RecursionError
    assert "were dropped" in reason.__notes__[-1]


def test_a_shallow_traceback_is_sent_whole_without_a_note():
    _, ref = otpy.spawn_monitor(deep, 10)
    reason = helpers.expect_down(ref).reason
    assert type(reason) is ValueError and not getattr(reason, "__notes__", [])


# ---- 5. a handled request is released -------------------------------------------------

class Holder(otpy.GenServer):
    def handle_call(self, request, caller):
        if request[0] == "take":
            return "taken"  # the request (a Tracked) must not be kept
        return helpers.Tracked(caller.pid, "reply")  # nor the reply, once sent


def test_a_server_frees_the_request_and_the_reply_once_its_callback_returns():
    pid = serve(Holder)
    # Nothing reaches the server after each call: only letting go of what
    # it handled can make it send these.
    assert otpy.call(pid, ("take", helpers.Tracked(otpy.self(), "request"))) == "taken"
    helpers.expect(lambda m: m == ("freed", "request", pid))
    assert isinstance(otpy.call(pid, ("give",)), helpers.Tracked)
    helpers.expect(lambda m: m == ("freed", "reply", pid))
    lowlevel.flush(lambda m: type(m) is tuple and m[0] == "freed")  # our own copies


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("holds a generator")
        self.numbers = (n for n in range(3))  # neither pickle nor dill can send this


def raise_while_handling():
    try:
        raise Unpicklable()
    except Unpicklable:
        raise ValueError("while handling an unpicklable one") from None


def test_an_exception_raised_while_handling_an_unpicklable_one_keeps_its_type():
    _, ref = otpy.spawn_monitor(raise_while_handling)
    reason = helpers.expect_down(ref).reason
    assert type(reason) is ValueError and str(reason) == "while handling an unpicklable one"
    assert isinstance(reason.__context__, otpy.RemoteError)
    assert reason.__context__.type_name.endswith("Unpicklable")
    assert reason.__suppress_context__  # "from None" is kept


def test_sendable_exception_stands_in_for_what_cannot_be_pickled():
    stand_in = lowlevel.sendable_exception(Unpicklable())
    assert isinstance(stand_in, otpy.RemoteError) and "holds a generator" in str(stand_in)
    error = ValueError("fine")
    assert lowlevel.sendable_exception(error) is error
