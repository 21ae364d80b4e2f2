"""CPython's own concurrent.futures tests (Lib/test/test_concurrent_futures,
as installed with the interpreter) run against otpy_pool.ProcessPoolExecutor:
their test classes, imported, with our executor as ``executor_type``.

Only an interpreter that ships its ``test`` package has them (Python 3.13
through pyenv here: ``.ci/run`` runs this file there); elsewhere the module
is skipped, saying why. A test that differs by design is listed in
BY_DESIGN with its reason and reported as a skip with that reason; every
other one must pass.
"""

from __future__ import annotations

import multiprocessing

import pytest
from otpy_pool import ProcessPoolExecutor

try:
    import test.test_concurrent_futures.executor  # noqa: F401 (imported by test_process_pool)
    import test.test_concurrent_futures.test_as_completed as cf_as_completed
    import test.test_concurrent_futures.test_deadlock as cf_deadlock
    import test.test_concurrent_futures.test_init as cf_init
    import test.test_concurrent_futures.test_process_pool as cf_process_pool
    import test.test_concurrent_futures.test_shutdown as cf_shutdown
    import test.test_concurrent_futures.test_wait as cf_wait
    from test.test_concurrent_futures import util as cf_util
except ImportError as exc:
    pytest.skip(f"this interpreter has no CPython test package ({exc}): run it with a Python "
                "that ships Lib/test, such as pyenv's 3.13 (.ci/run does)",
                allow_module_level=True)

pytestmark = pytest.mark.layer("full")  # real pool workers


class OtpyExecutorMixin(cf_util.ExecutorMixin):
    """Their executor mixin with ours as the executor. No ``ctx``: ours takes
    no multiprocessing context (one given is ignored), so their tests build
    it without; those that make multiprocessing objects get "spawn"'s."""

    executor_type = ProcessPoolExecutor

    def get_context(self):
        return multiprocessing.get_context("spawn")


#: test name (or their class.test name) -> why ours differs on purpose (docs/pool.md,
#: "Coming from concurrent.futures")
_INTERNALS = ("it reads the standard library's private attributes ({}), which ours, built "
              "on a pool, does not have")
_EAGER = ("ours starts its max_workers workers at construction (a worker is ready when "
          "work comes, and a failing initializer is known at once); the standard library's "
          "starts them on demand and reuses idle ones")
_UNPICKLE = ("a {} that cannot be unpickled fails only its own future, with TaskNotPicklable "
             "(a pickle.PicklingError), and the executor keeps serving; the standard "
             "library's breaks the whole pool (BrokenProcessPool)")
BY_DESIGN: dict[str, str] = {
    "FailingInitializerMixin.test_initializer": "ours runs the initializers at "
                        "construction and logs the failure there (CRITICAL, on the "
                        "concurrent.futures logger); the test looks for that log during its "
                        "submit. Its other checks (BrokenExecutor, _broken) are ours too",
    "test_killed_child": "a worker's death fails only the task it was running (BrokenWorker, "
                         "a BrokenProcessPool); the standard library's whole pool breaks and "
                         "refuses new work, ours replaces the worker and serves on",
    "test_idle_process_reuse_one": _EAGER,
    "test_idle_process_reuse_multiple": _EAGER,
    "test_saturation": _INTERNALS.format("_processes"),
    "test_processes_terminate": _INTERNALS.format("_processes"),
    "test_max_tasks_per_child": _INTERNALS.format("_processes"),
    "test_max_tasks_per_child_defaults_to_spawn_context": _INTERNALS.format("_mp_context"),
    "test_shutdown_deadlock_pickle": _INTERNALS.format("_executor_manager_thread"),
    "test_python_finalization_error": "it makes the standard library's second internal "
                                      "thread fail to start; ours starts one thread",
    "test_ressources_gced_in_workers": "it passes a multiprocessing Manager's proxy to the "
                                       "workers: ours are otpy processes, not children of "
                                       "the multiprocessing module (mp_context is ignored), "
                                       "so they share neither its authkey nor its objects",
    "test_traceback": "the worker's traceback is the exception's own (__traceback__, carried "
                      "by tblib), not a _RemoteTraceback text in __cause__",
    "test_error_at_task_unpickle": _UNPICKLE.format("task"),
    "test_exit_at_task_unpickle": _UNPICKLE.format("task"),
    "test_error_during_result_unpickle_in_result_handler": _UNPICKLE.format("result"),
    "test_exit_during_result_unpickle_in_result_handler": _UNPICKLE.format("result"),
    "test_exit_during_result_pickle_on_worker": "a result whose pickling calls sys.exit ends "
                                                "its worker: the task fails with BrokenWorker "
                                                "(a BrokenProcessPool), not SystemExit",
}


def _by_design(reason: str):
    def test(self):
        self.skipTest(f"differs by design: {reason}")
    return test


def _otpy_case(name: str, their_mixin: type) -> type:
    """A TestCase of their tests with our executor; BY_DESIGN ones skip with their reason."""
    overrides = {}
    for key, reason in BY_DESIGN.items():
        owner, _, test = key.rpartition(".")
        if owner in ("", their_mixin.__name__) and hasattr(their_mixin, test):
            overrides[test] = _by_design(reason)
    return type(name, (their_mixin, OtpyExecutorMixin, cf_util.BaseTestCase),
                {"__module__": __name__, "__qualname__": name, **overrides})


TestProcessPoolExecutor = _otpy_case("TestProcessPoolExecutor",
                                     cf_process_pool.ProcessPoolExecutorTest)
TestAsCompleted = _otpy_case("TestAsCompleted", cf_as_completed.AsCompletedTests)
TestWait = _otpy_case("TestWait", cf_wait.WaitTests)
TestShutdown = _otpy_case("TestShutdown", cf_shutdown.ProcessPoolShutdownTest)
TestInitializer = _otpy_case("TestInitializer", cf_init.InitializerMixin)
TestFailingInitializer = _otpy_case("TestFailingInitializer", cf_init.FailingInitializerMixin)
TestDeadlock = _otpy_case("TestDeadlock", cf_deadlock.ExecutorDeadlockTest)
