"""Smoke test of ``python -m otpy_pool.bench --quick``: well formed output,
peers measured or skipped, no logs in the output (never the speed)."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys

from otpy.bench import compare
from otpy_pool import bench

pytestmark = pytest.mark.layer("full")  # real pool workers

LATENCIES = ["call_rtt_us", "pool_execute_us", "pool_execute_stateless_us",
             "worker_crash_error_ms", "worker_replaced_ms", "session_recovery_ms",
             "pool_aexecute_us", "pool_execute_alt_us", "executor_submit_result_us"]
PEERS = ["mp_pool", "billiard", "pebble", "process_pool_executor", "loky"]


def test_quick_json_is_well_formed():
    out = subprocess.run([sys.executable, "-m", "otpy_pool.bench", "--quick", "--json", "-"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert "errors" not in report, report.get("errors")
    results, skipped = report["results"], report.get("skipped", {})
    for key in LATENCIES:
        figure = results[key]
        assert figure["n"] > 0 and 0 < figure["p50"] <= figure["p99"], key
    for peer in PEERS:  # measured, or skipped with the install hint
        key = f"{peer}_apply_us"
        assert key in results or "pip install" in skipped[key], key
    assert results["pool_burst_per_s"] > 0
    # ProcessPoolExecutor's, beside the standard library's in the same run
    assert report["ratios"]["executor_submit_result_over_ppe_p50"] > 0
    assert results["executor_map_chunked_per_s"] > 0
    assert report["ratios"]["executor_map_chunked_over_ppe"] > 0
    assert results["command_timeout_late_ms"]["n"] > 0  # the deadline-to-CommandTimeout figure
    chaos = results["chaos_kill_60pct"]
    assert chaos["callers_lost"] == 0 and chaos["charges_run_twice"] == 0
    assert set(results["growth_throughput_per_s"]) == {"workers_1", "workers_2"}
    assert results["idle_worker_memory"]["otpy_pool_kib"] > 0
    assert results["async_worker_concurrency"] > 0  # 200 naps on one async worker, seconds
    assert report["ratios"]["execute_over_call_p50"] > 0
    assert results["aexecute_concurrent_per_s"] > 0  # asyncio: 1,000 in flight from one loop
    assert report["ratios"]["aexecute_over_execute_p50"] > 0
    assert report["ratios"]["aexecute_concurrent_over_burst"] > 0
    if "ray" in skipped:  # measured beside a bare actor call, or skipped with the hint
        assert "pip install 'otpy[ray]'" in skipped["ray"]
    else:
        for key in ("ray_execute_us", "ray_actor_call_us"):
            assert 0 < results[key]["p50"] <= results[key]["p99"], key
        assert report["ratios"]["ray_execute_over_actor_call_p50"] > 0
    assert "[1/" in out.stderr and "] call_rtt_us" in out.stderr  # a progress line per case
    # the node's logs stay out of the output without --verbose
    assert "child started" not in out.stderr and "crash report" not in out.stderr


def test_compare_reads_rates_as_higher_is_better():
    report = {"ratios": {"burst_over_mp_pool": 2.0, "execute_over_call_p50": 1.1}}
    assert bench.comparable(report)["ratios"] == {"burst_over_mp_pool": 0.5,
                                                  "execute_over_call_p50": 1.1}
    worse = {"ratios": {"burst_over_mp_pool": 1.0, "execute_over_call_p50": 1.1}}
    assert compare(bench.comparable(worse), bench.comparable(report), 0.25) == [
        "burst_over_mp_pool"]
