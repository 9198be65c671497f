"""``natsbus bench`` runs end to end. A smoke test only: no timed assertions.

Speed is what the bench itself reports; here it runs with ``--quick`` (numbers
are noise) and only its shape is checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from natsbus.bench.plan import size_label
from natsbus.bench.runner import percentile
from natsbus.cli import main

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
ROOT = Path(__file__).resolve().parent.parent
CROSS = ("raw client, natsbus responder", "natsbus client, raw responder")

# A --quick run is about 30 s on an idle 2-core machine; a busy one (CI) may take twice that.
pytestmark = pytest.mark.timeout(180)


def _bench(argv: List[str], timeout: float) -> str:
    """``natsbus bench ARGV`` on its own embedded server; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "natsbus", "bench", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, Dict[str, Any], Path]]:
    """One ``natsbus bench --quick`` on its own embedded server: (stdout, JSON report, chart path)."""
    work = tmp_path_factory.mktemp("bench")
    report, chart = work / "bench.json", work / "bench.png"
    argv = ["--quick", "--json", str(report)]
    if HAS_MATPLOTLIB:
        argv += ["--chart", str(chart)]
    stdout = _bench(argv, timeout=120)
    yield stdout, json.loads(report.read_text()), chart


def test_bench_quick_prints_the_targets_table_with_ratios_first(quick_run: Tuple[str, Dict[str, Any], Path]) -> None:
    stdout, _, _ = quick_run
    lines = stdout.splitlines()
    header = lines.index("Targets: natsbus / raw nats-py, same run")
    assert lines[header + 1].split()[:4] == ["ratio", "target", "result", "measurement"]
    assert "throughput, 64 callers, small payload" in stdout
    assert "sequential p50, 10 KiB payload" in stdout
    assert "Measurements" in stdout
    assert "client csw/req" in stdout and "responder csw/req" in stdout
    assert "JSON library: json (a plain install's; --json-lib orjson compares)" in lines
    assert "--quick: a very short run; the numbers are noise" in lines


def test_bench_targets_are_those_of_the_issue(quick_run: Tuple[str, Dict[str, Any], Path]) -> None:
    _, report, _ = quick_run
    goals = {t["name"]: t["target"] for t in report["targets"]}
    for size in ("small", "10 KiB"):
        assert goals[f"throughput, 8 callers, {size} payload"] == ">= 0.95x"
        assert goals[f"throughput, 32 callers, {size} payload"] == ">= 0.75x"
        assert goals[f"throughput, 64 callers, {size} payload"] == ">= 0.75x"
        assert goals[f"throughput, 256 callers, {size} payload"] == ""  # for information
        assert goals[f"sequential p50, {size} payload"] == "<= 1.10x"
        assert goals[f"execute_many, 64 in flight, {size} payload"] == ">= 1.00x"
    assert goals["client RSS under load, 64 callers, small"] == "<= 1.25x"
    assert goals["worker RSS, peak"] == "<= 1.50x"
    for impl in CROSS:  # the diagnostics: informative, for the small payload only
        assert goals[f"{impl}: sequential p50, small payload"] == ""
        assert goals[f"{impl}: throughput, 64 callers, small payload"] == ""
    assert not [name for name in goals if name.startswith(CROSS) and "10 KiB" in name]
    assert (report["meta"]["json"], report["meta"]["raw_json"], report["meta"]["quick"]) == ("json", "json", True)


def test_bench_json_has_every_target_with_a_verdict(quick_run: Tuple[str, Dict[str, Any], Path]) -> None:
    _, report, _ = quick_run
    assert sorted(report) == ["cells", "memory", "meta", "targets"]
    names = [t["name"] for t in report["targets"]]
    for expected in (
        "throughput, 64 callers, small payload",
        "sequential p50, small payload",
        "execute_many, 64 in flight, small payload",
        "throughput, 64 callers, 10 KiB payload",
        "sequential p50, 10 KiB payload",
        "client RSS under load, 64 callers, small",
        "worker RSS, peak",
        "natsbus 256 vs 64 callers, small payload",
        "1 MiB payload works (sequential p50)",
        "200 more registered types vs none, 64 callers",
        "default reply store on vs off: throughput, 64 callers, small payload",
        "default reply store on vs off: execute_many, 64 in flight, small payload",
        "2 worker processes vs 1, 64 callers, 200 us of CPU per request",
    ):
        assert expected in names
    for target in report["targets"]:
        assert sorted(target) == ["cell", "goal", "name", "natsbus", "note", "ratio", "raw", "result", "target"]
        assert target["result"] in ("PASS", "MISS", "n/a", "-")
        assert (target["result"] == "-") == (target["target"] == "" and "works" not in target["name"])


def test_bench_measures_raw_and_natsbus_in_every_cell(quick_run: Tuple[str, Dict[str, Any], Path]) -> None:
    _, report, _ = quick_run
    keys = {cell["key"] for cell in report["cells"]}
    assert {f"throughput/{n}/{size}" for n in (8, 32, 64, 256) for size in (0, 10240)} <= keys
    assert {"sequential/1/0", "sequential/1/10240"} <= keys
    impls = {cell["key"]: cell["impls"] for cell in report["cells"]}
    assert impls["sequential/1/0"] == impls["throughput/64/0"] == ["raw", *CROSS, "natsbus"]
    assert impls["throughput/8/0"] == impls["sequential/1/10240"] == ["raw", "natsbus"]
    assert impls["store/64/0"] == ["natsbus", "natsbus, no reply store"]
    assert impls["processes/64/0"] == ["raw", "raw, 2 responder processes", "natsbus", "natsbus, 2 worker processes"]
    for cell in report["cells"]:
        if cell["scenario"] == "batch" and not report["meta"]["execute_many"]:
            assert cell["results"] == {"natsbus": {"missing": "execute_many"}}
            continue
        assert sorted(cell["results"]) == sorted(cell["impls"])
        for impl, result in cell["results"].items():
            assert result["requests"] > 0, (cell["key"], impl)
            assert result["client_cpu_us"] > 0 and result["responder_cpu_us"] > 0, (cell["key"], impl)
            assert result["client_switches"] >= 0 and result["responder_switches"] >= 0, (cell["key"], impl)
            if impl == "natsbus" and cell["scenario"] == "sequential":  # a worker thread wakes per request
                assert result["responder_switches"] >= 1, (cell["key"], result["responder_switches"])
            assert result["errors"] == 0, (cell["key"], impl, result["first_error"])
            assert [r["round"] for r in result["runs"]] == [0, 1]  # two alternating rounds
    assert report["meta"]["raw_imports_natsbus"] is False
    for impl in ("raw", "natsbus"):
        assert set(report["memory"][impl]) == {"client_under_load_kib", "client_peak_kib", "responder_peak_kib"}
        assert all(kib > 0 for kib in report["memory"][impl].values())


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the chart extra (matplotlib) is not installed")
def test_bench_draws_a_png_chart(quick_run: Tuple[str, Dict[str, Any], Path]) -> None:
    _, _, chart = quick_run
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the chart extra (matplotlib) is not installed")
def test_bench_chart_marks_a_quick_run_as_noise_and_draws_the_target_lines(
    quick_run: Tuple[str, Dict[str, Any], Path],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from natsbus.bench.report import chart_figure

    _, report, _ = quick_run
    fig = chart_figure(report, plt)
    try:
        left, right = fig.axes
        texts = [t.get_text() for t in fig.texts]
        assert fig._suptitle.get_text().startswith("--quick run: the numbers are noise")
        assert "QUICK RUN: NOISE" in texts
        # one dashed segment per throughput target (8, 32, 64 callers; execute_many), per payload size
        assert sum(len(c.get_segments()) for c in left.collections) == 8
        assert sum(len(c.get_segments()) for c in right.collections) == 2  # the two sequential p50s
    finally:
        plt.close(fig)


def test_bench_compares_a_baseline_natsbus_in_the_same_run(tmp_path: Path) -> None:
    """The same tree as the baseline: its rows are there, beside raw and natsbus, in one run."""
    report_path = tmp_path / "bench.json"
    argv = ["--quick", "--baseline", str(ROOT), "--payload-sizes", "0", "--concurrency", "8"]
    stdout = _bench([*argv, "--json", str(report_path)], timeout=120)
    report = json.loads(report_path.read_text())
    assert report["meta"]["baseline"]["path"] == str(ROOT)
    assert f"baseline: natsbus {report['meta']['baseline']['natsbus']} from {ROOT}" in stdout
    assert "Before and after: natsbus / baseline natsbus, same run" in stdout
    cells = {cell["key"]: cell for cell in report["cells"]}
    assert cells["throughput/8/0"]["impls"] == ["raw", *CROSS, "natsbus", "baseline"]  # 8: the reference here
    assert cells["throughput/8/0"]["results"]["baseline"]["requests"] > 0
    names = [row["name"] for row in report["baseline"]]
    assert names[:2] == ["sequential p50, small payload", "throughput, 8 callers, small payload"]
    assert names[-3:] == ["RSS, client, under load", "RSS, client, peak", "RSS, responder, peak"]
    assert all(row["ratio"] is not None for row in report["baseline"])
    assert set(report["memory"]) == {"raw", "natsbus", "baseline"}


def test_bench_rejects_a_bad_concurrency_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--concurrency", "64,x"])
    assert exit_info.value.code == 2
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile([], 50)) == (50.0, 99.0, None)


def test_size_labels_name_the_payloads() -> None:
    assert [size_label(s) for s in (0, 10240, 1024 * 1024, 1000)] == ["small", "10 KiB", "1 MiB", "1000 B"]
