"""Smoke test of ``python -m otpy.bench``: the output is well formed (never the speed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

LATENCIES = ["pipe_pickle_rtt_us", "send_receive_rtt_us", "call_rtt_us", "call_rtt_observed_us",
             "spawn_ms", "down_ms", "restart_ms", "isolated_tree_ms", "bare_fork_ms",
             "import_otpy_ms", "python_startup_ms"]
MEMORY = ["shared_kib_per_process", "written_kib_per_process", "shared_kib_per_bare_fork",
          "written_kib_per_bare_fork"]


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otpy.bench", "--quick", *args],
                          capture_output=True, text=True, timeout=300)


def _status(report_or_text: dict | str) -> int:
    """The exit status a run must have given its gates: 1 if one failed. A gate
    is a timing property of the machine at that moment (a node's processes
    signalled within 1 s of its SIGKILL), so the test checks the wiring, not
    the verdict."""
    if isinstance(report_or_text, dict):
        return int(not all(gate["ok"] for gate in report_or_text["gates"].values()))
    return int("GATE FAILED" in report_or_text)


def test_quick_json_is_well_formed_and_compare_flags_regressions(tmp_path):
    out = run_bench("--json", "-")
    report = json.loads(out.stdout)
    assert "errors" not in report and out.returncode == _status(report), out.stderr
    assert set(report) >= {"machine", "results", "ratios"}
    assert report["machine"]["cpus"] >= 1
    for key in LATENCIES:
        figure = report["results"][key]
        assert figure["n"] > 0 and 0 < figure["p50"] <= figure["p99"], key
    assert report["results"]["orphans_after_root_kill"] == 0
    assert report["results"]["cast_per_s"] > 0
    assert report["ratios"]["send_receive_over_pipe_p50"] > 0
    assert report["ratios"]["call_over_pipe_p50"] > 0
    assert report["ratios"]["call_observed_over_call_p50"] > 0
    for key in MEMORY:  # KiB: what a process shares with the zygote, what it writes
        assert isinstance(report["results"][key], int) and report["results"][key] > 0, key
    for name in ("call_p99_over_p50", "pipe_p99_over_p50", "import_otpy_over_python_startup",
                 "spawn_over_bare_fork_p50", "shared_over_bare_fork", "written_over_bare_fork"):
        assert report["ratios"][name] > 0, name
    assert report["ratios"]["call_p99_over_p50"] >= 1  # p99 over p50 of the same samples
    gates = report["gates"]
    assert set(gates) == {"orphans_after_root_kill", "unsignalled_after_kill_at_1000"}
    assert all(gate["limit"] == 0 and gate["ok"] == (gate["value"] == 0)
               for gate in gates.values()), gates
    cases = sum(len(report.get(part, {})) for part in ("results", "skipped", "errors"))
    assert f"[1/{cases}] python_startup_ms" in out.stderr  # a progress line per case
    assert f"[{cases}/{cases}] " in out.stderr

    baseline = dict(report, ratios={k: v / 1000 for k, v in report["ratios"].items()})
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    regressed = run_bench("--compare", str(path))
    assert regressed.returncode == 1 and "REGRESSED" in regressed.stdout
    compared = [line for line in regressed.stdout.splitlines() if " baseline " in line]
    assert compared and not any(line.startswith(("all_gone_after_kill_over_bare_forks",
                                                 "call_p99_over_p50", "pipe_p99_over_p50"))
                                for line in compared)  # reported, too noisy to check

    generous = dict(report, ratios={k: v * 1000 for k, v in report["ratios"].items()})
    path.write_text(json.dumps(generous))
    fine = run_bench("--compare", str(path))
    assert "REGRESSED" not in fine.stdout and fine.returncode == _status(fine.stdout), \
        fine.stdout + fine.stderr


def test_growth_keys_in_a_quick_run():
    report = json.loads(run_bench("--json", "-").stdout)
    results = report["results"]
    for size in (10, 1000):
        figure = results[f"spawn_ms_at_{size}"]
        assert figure["n"] > 0 and 0 < figure["p50"] <= figure["p99"], size
    assert results["zygote_kib_per_process_at_1000"] > 0
    # a count, not a verdict: how fast 1,000 processes finish exiting is a timing
    # figure, so the benchmark reports it and no test asserts it
    assert isinstance(results["orphans_after_kill_at_1000"], int)
    assert isinstance(results["unsignalled_after_kill_at_1000"], int)
    gone = results["all_gone_ms_after_kill_at_1000"]
    assert gone is None or gone > 0  # None: some outlived 10 s (and the benchmark killed them)
    assert report["ratios"]["spawn_at_1000_over_at_10_p50"] > 0
    # the kernel's floor beside it: the same number of bare forks, killed at once
    assert isinstance(results["orphans_after_kill_bare_forks_at_1000"], int)
    floor = results["all_gone_ms_after_kill_bare_forks_at_1000"]
    assert floor is None or floor > 0
    if gone and floor:
        assert report["ratios"]["all_gone_after_kill_over_bare_forks_at_1000"] > 0
    assert "spawn_ms_at_5000" not in results  # the 5,000-process program: full runs only


def test_without_the_observer_extra_the_observed_case_is_skipped_at_once_and_logs_stay_out():
    program = ("import sys; sys.modules['textual'] = None\n"
               "from otpy.bench import main\n"
               "sys.exit(main(['--quick', '--json', '-']))\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=300)
    report = json.loads(out.stdout)
    assert out.returncode == _status(report), out.stderr[-2000:]
    assert "call_rtt_observed_us" not in report["results"]
    assert "pip install" in report["skipped"]["call_rtt_observed_us"]
    assert "errors" not in report
    # restart_ms SIGKILLs a child hundreds of times: none of it is printed
    assert "crash report" not in out.stderr and "child restarted" not in out.stderr


def test_the_table_shows_a_figure_a_run_could_not_take():
    from otpy.bench import machine, table

    report = {"machine": machine(), "results": {"all_gone_ms_after_kill_at_5000": None,
                                                "spawn_ms": {"p50": 3.1, "p99": 5.2, "n": 9}},
              "ratios": {}}
    text = table(report)
    assert re.search(r"all_gone_ms_after_kill_at_5000\s+-\n", text)
    assert re.search(r"spawn_ms\s+3.1\s+5.2\s+9", text)
    widest = "all_gone_after_kill_over_bare_forks_at_5000"  # longer than any result's key
    text = table(dict(report, ratios={widest: 7.1}))
    assert re.search(rf"^{widest} +7.1$", text, re.M)  # the column is as wide as the longest key
    assert re.search(r"^spawn_ms {36,}3.1", text, re.M)


def test_a_failed_gate_fails_the_run_and_is_shown(capsys):
    from otpy.bench import check_gates, cli, machine

    results = {"unsignalled_after_kill_at_5000": 3, "orphans_after_root_kill": 0,
               "unsignalled_after_kill_at_1000": None}
    gates = check_gates(results, {"unsignalled_after_kill_at_5000": 0,
                                  "orphans_after_root_kill": 0,
                                  "unsignalled_after_kill_at_1000": 0,
                                  "not_measured": 0})
    assert gates == {"unsignalled_after_kill_at_5000": {"value": 3, "limit": 0, "ok": False},
                     "orphans_after_root_kill": {"value": 0, "limit": 0, "ok": True},
                     "unsignalled_after_kill_at_1000": {"value": None, "limit": 0, "ok": False}}
    report = {"machine": machine(), "results": results, "ratios": {}, "gates": gates}
    assert cli("bench", "", lambda args: report, ["--verbose"]) == 1  # (logs as they are)
    text = capsys.readouterr().out
    assert re.search(r"^unsignalled_after_kill_at_5000 +GATE FAILED +\(at most 0\)$", text, re.M)
    assert re.search(r"^orphans_after_root_kill +ok", text, re.M)
    passing = dict(report, gates={k: v for k, v in gates.items() if v["ok"]})
    assert cli("bench", "", lambda args: passing, ["--verbose"]) == 0


def test_a_ratio_can_divide_two_percentiles_of_one_figure():
    from otpy.bench import divide

    results = {"call_rtt_us": {"p50": 20.0, "p99": 45.0, "n": 9}, "rate": 10, "other": 4}
    ratios = divide(results, {"tail": ("call_rtt_us:p99", "call_rtt_us:p50"),
                              "rates": ("rate", "other"), "missing": ("rate", "absent")})
    assert ratios == {"tail": 2.25, "rates": 2.5}
