"""Property tests: per-sender order under load, and terms arriving intact."""

from __future__ import annotations

import otpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import DEADLINE, echo, expect_down

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def burst(to: otpy.Pid, tag: int, items: list) -> None:
    for seq, item in enumerate(items):
        otpy.send(to, (tag, seq, item))


@SETTINGS
@given(st.lists(st.lists(st.binary(max_size=64 * 1024), max_size=60), min_size=1, max_size=4))
def test_per_sender_order_holds_with_concurrent_senders(plan):
    """Several processes send bursts (small and >32 KiB messages) at once."""
    me = otpy.self()
    run = otpy.make_ref()  # examples never see each other's messages
    refs = []
    for tag, items in enumerate(plan):
        refs.append(otpy.spawn_monitor(burst, me, (run, tag), items)[1])
    total = sum(len(items) for items in plan)
    got = [otpy.receive(timeout=DEADLINE, match=lambda m: type(m) is tuple and m[0][0] == run)
           for _ in range(total)]
    for ref in refs:
        expect_down(ref)
    for tag, items in enumerate(plan):
        mine = [(seq, item) for (_, t), seq, item in got if t == tag]
        assert mine == list(enumerate(items))


terms = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda children: st.lists(children) | st.tuples(children, children)
    | st.dictionaries(st.text(), children) | st.frozensets(st.integers()),
    max_leaves=30,
)


@SETTINGS
@given(st.lists(terms, min_size=1, max_size=10))
def test_any_picklable_term_arrives_equal(values):
    me = otpy.self()
    e = otpy.spawn(echo)
    run = otpy.make_ref()
    for v in values:
        otpy.send(e, (me, (run, v)))
    got = [otpy.receive(timeout=DEADLINE, match=lambda m: m[1][0] == run)[1][1] for _ in values]
    assert got == values
    ref = otpy.monitor(e)
    otpy.send(e, "stop")
    expect_down(ref)
