"""Every speed benchmark runs end to end at a tiny size (so they don't rot); no timings
are asserted: speed is measured by ``make bench``, not by tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run_all, stalls


def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_results(tmp_path: Path) -> None:
    parts = [part for part in run_all.PARTS if part not in ("gateway", "catalog")]  # own tests
    results = run_all.run(parts, quick=True, out=tmp_path)

    assert set(results) == {"ingest", "serving", "freshness"}
    for result in results.values():
        assert result["machine"]["cores"] and result["machine"]["libraries"]["faiss-cpu"]
    ingest = results["ingest"]["sizes"][0]
    assert ingest["applied"] + ingest["skipped"] == ingest["events"] > 0
    assert ingest["floor"]["writes_per_s"] > 0
    serving = results["serving"]["sizes"][0]
    assert {"echo", "ivf", "exact"} <= set(serving["runs"])
    assert all(0.0 <= s["recall_at_10"] <= 1.0 for s in serving["index"]["recall_sweep"])
    for run in serving["runs"].values():
        assert all(point["latency"]["n"] > 0 for point in run["load"])
    assert serving["runs"]["ivf"]["server"]["requests"] > 0
    # the same run through each client: lean generator, sync and asyncio library clients
    clients = json.loads((tmp_path / "serving_clients.json").read_text())["sizes"][0]["clients"]
    assert set(clients) == {"lean", "sync", "asyncio"}
    for name, client in clients.items():
        assert client["closed_loop_max_per_s"] > 0 and client["open_200"]["answered_per_s"] > 0
        assert client["echo_floor"]["open_200"]["answered_per_s"] > 0
        # twice its capacity: documented errors only, then answers again
        assert client["overload"]["only_documented_errors"], (name, client["overload"])
        assert client["recovery"]["answered_per_s_before_after"][1] > 0
    assert results["freshness"]["runs"][0]["probes"] == 5
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "Ingest" in summary and "Serving" in summary and "Freshness" in summary
    assert "Serving through each client" in summary
    assert json.loads((tmp_path / "serving.json").read_text())["benchmark"] == "serving"


def test_the_catalog_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    run_all.run(["catalog"], quick=True, out=tmp_path)

    result = json.loads((tmp_path / "catalog_20000.json").read_text())
    table = result["table"]
    assert table[0]["codec"] == "exact" and table[0]["recall_at_10"] == 1.0
    assert {row["codec"] for row in table} == {"exact", "flat", "sq8"}
    assert all(0.0 <= row["recall_at_10"] <= 1.0 and row["index_bytes"] > 0 for row in table)
    served = [row for row in table if row.get("served")]
    assert len(served) == 1 and served[0]["recall_at_10"] >= 0.95
    for run in result["serving"]["runs"].values():
        assert all(point["latency"]["n"] > 0 for point in run["load"])
    assert result["serving"]["runs"]["scorer"]["server"]["requests"] > 0
    assert "Catalog of 20,000 items" in (tmp_path / "SUMMARY.md").read_text()


@pytest.mark.gateway
def test_the_gateway_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    results = run_all.run(["gateway"], quick=True, out=tmp_path)

    points = results["gateway"]["points"]
    assert set(points) == {"closed_2_clients", "open_50_per_s"}
    for point in points.values():
        for name in ("bare", "gateway", "gateway_lean"):
            assert point[name]["answered"] > 0, point[name]["errors"]
            assert point[name]["sources"].get("state", 0) > 0  # users' states were read
        for ratio in (point["gateway_over_bare"], point["gateway_lean_over_bare"]):
            assert ratio["answered_per_s"] and ratio["p50"] and ratio["p99"]
    assert "Gateway" in (tmp_path / "SUMMARY.md").read_text()


def test_the_stall_probe_times_sleeps_on_every_cpu() -> None:
    result = stalls.main(["--seconds", "0.3"])
    assert result["cpus"] and result["steal_s"] >= 0
    for cpu in result["cpus"].values():
        assert cpu["oversleep"]["n"] > 50  # ~1 ms sleeps for 0.3 s
        assert cpu["max_ms"] >= cpu["oversleep"]["p50_us"] / 1e3


@pytest.mark.cluster
def test_the_cluster_comparison_runs_at_a_tiny_size(tmp_path: Path) -> None:
    from benchmarks import cluster

    result = cluster.main(["--quick", "--out", str(tmp_path)])
    assert result["ingest"][0]["exact"] == {"single": True, "cluster": True}
    assert result["request_queues"] == {"single": 1, "cluster": 8}
    assert all(point["answered_per_s"]["cluster"] > 0 for point in result["serving"])


def test_the_memory_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    from benchmarks import memory

    args = ["--users", "200", "--sample", "50", "--catalog", "5000", "--index-items", "20000"]
    result = memory.main([*args, "--nlist", "16", "--out", str(tmp_path)])
    one_version = result["user_state"]["by_redis"]["single"][1]["memory_usage_samples0"]
    assert one_version["median"] > 0
