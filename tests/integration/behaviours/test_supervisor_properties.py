"""Property tests: the restart-intensity window, and child-list bookkeeping."""

from __future__ import annotations

import otpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otpy.lowlevel import RestartIntensity

from servers import Counter


@given(max_restarts=st.integers(0, 5), max_seconds=st.floats(0.5, 10),
       gaps=st.lists(st.floats(0, 5), min_size=1, max_size=40))
def test_intensity_is_a_sliding_window(max_restarts, max_seconds, gaps):
    """Exceeded exactly when more than max_restarts restarts fall in the last max_seconds."""
    now = [0.0]
    window = RestartIntensity(max_restarts, max_seconds, clock=lambda: now[0])
    times = []
    for gap in gaps:
        now[0] += gap
        times.append(now[0])
        exceeded = window.add()
        in_window = [t for t in times if t > now[0] - max_seconds]
        assert exceeded == (len(in_window) > max_restarts)
        if exceeded:
            break


OPS = st.lists(st.tuples(st.sampled_from(["start", "terminate", "restart", "delete"]),
                         st.integers(0, 3)), max_size=12)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(OPS)
def test_child_bookkeeping_matches_a_model(ops):
    """Random start/terminate/restart/delete: the supervisor agrees with a dict."""
    sup = otpy.Supervisor.start_link([])
    model: dict[int, bool] = {}  # id -> running, in insertion order
    for op, cid in ops:
        try:
            if op == "start":
                otpy.Supervisor.start_child(sup, Counter.child_spec(id=cid))
                outcome = "ok"
            elif op == "terminate":
                otpy.Supervisor.terminate_child(sup, cid)
                outcome = "ok"
            elif op == "restart":
                otpy.Supervisor.restart_child(sup, cid)
                outcome = "ok"
            else:
                otpy.Supervisor.delete_child(sup, cid)
                outcome = "ok"
        except otpy.SupervisorError as exc:
            outcome = type(exc).__name__
        expected = _model_step(model, op, cid)
        assert outcome == expected, (op, cid, model)
        children = otpy.Supervisor.which_children(sup)
        assert [(c.id, c.pid is not None) for c in children] == list(model.items())
        assert all(otpy.is_alive(c.pid) for c in children if c.pid is not None)
    ref = otpy.monitor(sup)
    otpy.Supervisor.stop(sup)
    otpy.receive(timeout=10, match=lambda m: type(m) is otpy.Down and m.ref == ref)


def _model_step(model: dict, op: str, cid: int) -> str:
    if op == "start":
        if cid in model:
            return "AlreadyPresent"
        model[cid] = True
        return "ok"
    if cid not in model:
        return "ChildNotFound"
    if op == "terminate":
        model[cid] = False
        return "ok"
    if op == "restart":
        if model[cid]:
            return "ChildRunning"
        model[cid] = True
        return "ok"
    if model[cid]:
        return "ChildRunning"
    del model[cid]
    return "ok"
