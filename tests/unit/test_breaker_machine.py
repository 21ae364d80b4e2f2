"""The breaker's state machine against a model, with a fake clock.

The model is written differently on purpose (a plain list of failure times
filtered on every use, an "open until" time, an epoch count for timers), so
a shared mistake is unlikely. Steps include time passing by exact amounts,
so failures exactly ``window`` old and timers exactly due are exercised.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otpy_pool._breaker_machine import BreakerMachine

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Model:
    def __init__(self, max_failures, window, reset_after, half_open_calls, success_threshold,
                 clock):
        self.p = (max_failures, window, reset_after, half_open_calls, success_threshold)
        self.clock = clock
        self.state = "closed"
        self.fail_times: list[float] = []
        self.open_until = None
        self.trials: set = set()
        self.good = 0
        self.opened = 0
        self.failures = 0
        self.epoch = 0  # transitions so far

    def to(self, state):
        self.state = state
        self.epoch += 1
        self.trials = set()
        self.good = 0
        self.fail_times = []
        self.open_until = self.clock() + self.p[2] if state == "open" else None
        if state == "open":
            self.opened += 1

    def due(self):
        if self.state == "open" and self.clock() >= self.open_until:
            self.to("half_open")

    def live_failures(self):
        return [t for t in self.fail_times if self.clock() - t < self.p[1]]

    def fail(self, trial):
        self.failures += 1
        if trial is not None and trial in self.trials:
            self.to("open")
        elif self.state == "closed":
            self.fail_times = self.live_failures() + [self.clock()]
            if len(self.fail_times) >= self.p[0]:
                self.to("open")

    def succeed(self, trial):
        if trial in self.trials:
            self.trials.remove(trial)
            self.good += 1
            if self.good >= self.p[4]:
                self.to("closed")

    def trial(self, token):
        self.due()
        if self.state == "half_open" and len(self.trials) < self.p[3]:
            self.trials.add(token)
            return True
        return False

    def reset(self):
        if self.state == "disabled":
            return
        if self.state != "closed":
            self.to("closed")
        self.fail_times = []

    def disable(self):
        if self.state != "disabled":
            self.to("disabled")

    def enable(self):
        if self.state == "disabled":
            self.to("closed")


steps = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0])),
    st.tuples(st.just("fail"), st.sampled_from([None, 0, 1, 2])),
    st.tuples(st.just("succeed"), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("trial"), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("release"), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("arm"), st.none()),      # remember a timer for the current opening
    st.tuples(st.just("fire"), st.integers(0, 3)),  # a remembered timer fires (maybe stale)
    st.tuples(st.sampled_from(["melt", "reset", "disable", "enable"]), st.none()),
), max_size=60)


@SETTINGS
@given(max_failures=st.integers(1, 4), window=st.sampled_from([1.0, 2.0, 3.0]),
       reset_after=st.sampled_from([0.5, 1.0, 2.0]), half_open_calls=st.integers(1, 3),
       success_threshold=st.integers(1, 3), steps=steps)
def test_the_machine_behaves_as_the_model(max_failures, window, reset_after, half_open_calls,
                                          success_threshold, steps):
    clock = Clock()
    wall = Clock()
    machine = BreakerMachine(max_failures, window, reset_after, half_open_calls,
                             success_threshold, clock=clock, wall=wall)
    model = Model(max_failures, window, reset_after, half_open_calls, success_threshold, clock)
    timers: list[tuple[int, int]] = []  # (machine gen, model epoch) when armed
    for op, arg in steps:
        if op == "wait":
            clock.now += arg
            wall.now += arg
        elif op == "fail":
            machine.failure(arg)
            model.fail(arg)
        elif op == "succeed":
            machine.success(arg)
            model.succeed(arg)
        elif op == "trial":
            assert machine.try_trial(arg) == model.trial(arg)
        elif op == "release":
            machine.release(arg)
            model.trials.discard(arg)
        elif op == "arm":
            timers.append((machine.gen, model.epoch))
        elif op == "fire":
            if arg < len(timers):
                gen, epoch = timers[arg]
                machine.on_timer(gen)
                if epoch == model.epoch:  # a timer of an earlier state never acts
                    model.due()
        else:
            getattr(machine, op)()
            getattr(model, "fail" if op == "melt" else op)(*([None] if op == "melt" else []))
        assert machine.state == model.state, (op, arg)
        assert machine.opened == model.opened
        assert machine.failures == model.failures
        assert machine.trials == model.trials
        assert len(machine.trials) <= half_open_calls
        if machine.state == "closed":
            assert machine.failures_in_window() == len(model.live_failures())
            assert machine.failures_in_window() < max_failures
        if machine.state == "open":
            assert machine.retry_after() == max(0.0, model.open_until - clock.now)
        if machine.state == "disabled":
            assert machine.retry_after() is None
        transitions = machine.events
        machine.events = []
        assert all(state != previous for state, previous, _ in transitions)


@SETTINGS
@given(max_failures=st.integers(1, 5), gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0]),
                                                      max_size=12))
def test_a_failure_exactly_window_old_no_longer_counts(max_failures, gaps):
    clock = Clock()
    machine = BreakerMachine(max_failures, 1.0, 10.0, clock=clock)
    times = []
    for gap in gaps:
        clock.now += gap
        machine.failure()
        times.append(clock.now)
        live = [t for t in times if clock.now - t < 1.0]
        if machine.state == "open":
            assert len(live) >= max_failures
            return
        assert len(live) < max_failures


def test_snapshot_and_restore_give_the_same_machine():
    clock = Clock()
    machine = BreakerMachine(3, 5.0, 2.0, 2, 2, clock=clock, wall=clock)
    machine.failure()
    clock.now += 1
    machine.failure()
    copy = BreakerMachine(3, 5.0, 2.0, 2, 2, clock=clock, wall=clock)
    copy.restore(machine.snapshot())
    assert copy.snapshot() == machine.snapshot()
    machine.failure()
    copy.failure()
    assert copy.state == machine.state == "open"
    clock.now += 2
    assert copy.try_trial("a") and machine.try_trial("a")
    assert copy.snapshot() == machine.snapshot()


def test_a_stale_timer_does_nothing_even_when_the_new_opening_is_due():
    clock = Clock()
    machine = BreakerMachine(1, 5.0, 1.0, clock=clock, wall=clock)
    machine.failure()
    first = machine.gen
    machine.reset()
    machine.failure()  # a second opening
    clock.now += 1.0
    machine.on_timer(first)
    assert machine.state == "open"  # only the second opening's own timer (or a caller) acts
    machine.on_timer(machine.gen)
    assert machine.state == "half_open"
