"""The bench's pure logic: its plan, its verdicts, its child boot and its option checks.

No timed assertions: the figures here are made up, and no child is measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from natsbus.bench import runner
from natsbus.bench.plan import (
    BASELINE,
    CROSS,
    HANDLER_WORK_US,
    NATSBUS_X2,
    NO_STORE,
    RAW_X2,
    STORE_ROUNDS,
    Options,
    plan,
)
from natsbus.bench.report import targets, versus_baseline
from natsbus.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _result(throughput: float, p50_us: float = 500.0, cpu_us: float = 100.0, errors: int = 0) -> Dict[str, Any]:
    return {
        "throughput": throughput,
        "p50_us": p50_us,
        "p99_us": 2 * p50_us,
        "client_cpu_us": cpu_us,
        "responder_cpu_us": cpu_us,
        "errors": errors,
        "first_error": "TimeoutError: boom" if errors else "",
        "capped": False,
        "requests": 1000,
    }


def _verdicts(cells: Dict[str, Dict[str, Dict[str, Any]]], options: Optional[Options] = None) -> Dict[str, str]:
    rows = targets(options or Options(payload_sizes=(0,)), cells, {})
    return {row["name"]: row["result"] for row in rows}


def test_default_plan_measures_8_32_64_and_256_callers_with_the_diagnostics_at_64() -> None:
    main_cells, growth = plan(Options(), execute_many=True)
    keys = [cell.key for cell in main_cells]
    assert keys[:6] == [
        "sequential/1/0",
        "throughput/8/0",
        "throughput/32/0",
        "throughput/64/0",
        "throughput/256/0",
        "batch/64/0",
    ]
    impls = {cell.key: cell.impls for cell in main_cells}
    assert impls["sequential/1/0"] == impls["throughput/64/0"] == ("raw", *CROSS, "natsbus")
    assert impls["throughput/8/0"] == impls["throughput/64/10240"] == ("raw", "natsbus")
    assert [cell.key for cell in growth] == [
        "types/64/0",
        "store/64/0",
        "store-batch/64/0",
        "processes/64/0",
        "sequential/1/1048576",
    ]
    by_key = {cell.key: cell for cell in growth}
    assert by_key["store/64/0"].impls == by_key["store-batch/64/0"].impls == ("natsbus", NO_STORE)
    # A difference of a few percent needs more alternating rounds than the others' two.
    assert by_key["store/64/0"].rounds == by_key["store-batch/64/0"].rounds == STORE_ROUNDS == 6
    assert by_key["types/64/0"].rounds is None
    quick = {cell.key: cell for cell in plan(Options(quick=True), execute_many=True)[1]}
    assert quick["store/64/0"].rounds is None
    processes = by_key["processes/64/0"]
    assert processes.impls == ("raw", RAW_X2, "natsbus", NATSBUS_X2)
    assert processes.work_us == HANDLER_WORK_US > 0  # a handler with work a second core can share
    assert [cell.key for cell in plan(Options(), execute_many=False)[1]].count("store-batch/64/0") == 0


def test_plan_with_a_baseline_measures_it_in_every_main_cell_but_not_in_the_growth_checks() -> None:
    main_cells, growth = plan(Options(baseline="/somewhere", concurrency=(8,)), execute_many=True)
    assert all(cell.impls[-2:] == ("natsbus", BASELINE) for cell in main_cells)
    assert not [cell for cell in growth if BASELINE in cell.impls]


def test_reference_callers_are_64_or_else_the_first_given() -> None:
    assert (Options().reference, Options(concurrency=(16, 128)).reference) == (64, 16)


def test_throughput_targets_are_095_at_8_and_075_at_32_and_64_and_none_at_256() -> None:
    cells = {
        "throughput/8/0": {"raw": _result(1000), "natsbus": _result(950)},
        "throughput/32/0": {"raw": _result(1000), "natsbus": _result(749)},
        "throughput/64/0": {"raw": _result(1000), "natsbus": _result(750)},
        "throughput/256/0": {"raw": _result(1000), "natsbus": _result(100)},
    }
    verdicts = _verdicts(cells)
    assert verdicts["throughput, 8 callers, small payload"] == "PASS"
    assert verdicts["throughput, 32 callers, small payload"] == "MISS"
    assert verdicts["throughput, 64 callers, small payload"] == "PASS"
    assert verdicts["throughput, 256 callers, small payload"] == "-"
    cells["throughput/8/0"]["natsbus"] = _result(949)
    assert _verdicts(cells)["throughput, 8 callers, small payload"] == "MISS"


def test_sequential_p50_target_is_at_most_110() -> None:
    cells = {"sequential/1/0": {"raw": _result(1000, p50_us=500.0), "natsbus": _result(900, p50_us=550.0)}}
    assert _verdicts(cells)["sequential p50, small payload"] == "PASS"
    cells["sequential/1/0"]["natsbus"] = _result(900, p50_us=551.0)
    assert _verdicts(cells)["sequential p50, small payload"] == "MISS"


def test_a_measurement_with_errors_misses_whatever_its_ratio() -> None:
    cells = {"throughput/8/0": {"raw": _result(1000), "natsbus": _result(2000, errors=3)}}
    rows = targets(Options(payload_sizes=(0,)), cells, {})
    row = next(r for r in rows if r["name"] == "throughput, 8 callers, small payload")
    assert (row["result"], row["note"]) == ("MISS", "3 errors (TimeoutError: boom)")


def test_cross_diagnostics_are_ratios_to_raw_without_a_verdict() -> None:
    cells = {
        "throughput/64/0": {
            "raw": _result(1000),
            "raw client, natsbus responder": _result(900),
            "natsbus client, raw responder": _result(800),
            "natsbus": _result(700),
        }
    }
    rows = {r["name"]: r for r in targets(Options(payload_sizes=(0,)), cells, {})}
    worker = rows["raw client, natsbus responder: throughput, 64 callers, small payload"]
    client = rows["natsbus client, raw responder: throughput, 64 callers, small payload"]
    assert (worker["ratio"], worker["result"], worker["note"]) == (
        0.9,
        "-",
        "diagnostic: only the responder is natsbus",
    )
    assert (client["ratio"], client["result"], client["note"]) == (0.8, "-", "diagnostic: only the client is natsbus")


def test_the_reply_store_rows_compare_natsbus_with_itself_store_on_vs_off() -> None:
    cells = {
        "store/64/0": {"natsbus": _result(960), NO_STORE: _result(1000)},
        "store-batch/64/0": {"natsbus": _result(900), NO_STORE: _result(1000)},
    }
    rows = {r["name"]: r for r in targets(Options(payload_sizes=(0,)), cells, {})}
    throughput = rows["default reply store on vs off: throughput, 64 callers, small payload"]
    batch = rows["default reply store on vs off: execute_many, 64 in flight, small payload"]
    assert (throughput["ratio"], throughput["target"], throughput["result"]) == (0.96, ">= 0.95x", "PASS")
    assert (batch["ratio"], batch["result"]) == (0.9, "MISS")


def test_the_processes_rows_put_natsbus_beside_raw_with_two_responders_each() -> None:
    cells = {
        "processes/64/0": {
            "raw": _result(1000),
            RAW_X2: _result(1800),
            "natsbus": _result(800),
            NATSBUS_X2: _result(1200),
        }
    }
    rows = {r["name"]: r for r in targets(Options(payload_sizes=(0,)), cells, {})}
    work = f"{HANDLER_WORK_US} us of CPU per request"
    versus_raw = rows[f"2 worker processes, 64 callers, {work}"]
    versus_one = rows[f"2 worker processes vs 1, 64 callers, {work}"]
    assert (versus_raw["ratio"], versus_raw["result"]) == (0.667, "-")  # 1,200 / 1,800
    assert (versus_one["ratio"], versus_one["raw"], versus_one["result"]) == (1.5, "1.80x", "-")


def test_targets_carry_their_cell_and_goal_for_the_chart() -> None:
    rows = {r["name"]: r for r in targets(Options(payload_sizes=(0,)), {}, {})}
    assert (
        rows["throughput, 8 callers, small payload"]["cell"],
        rows["throughput, 8 callers, small payload"]["goal"],
    ) == (
        "throughput/8/0",
        0.95,
    )
    assert rows["sequential p50, small payload"]["goal"] == 1.1
    assert rows["throughput, 256 callers, small payload"]["goal"] is None
    assert rows["worker RSS, peak"]["cell"] is None


def test_versus_baseline_compares_natsbus_with_the_baseline_per_cell_and_in_memory() -> None:
    cells: List[Dict[str, Any]] = [
        {
            "key": "sequential/1/0",
            "scenario": "sequential",
            "payload": 0,
            "concurrency": 1,
            "results": {"raw": _result(1), "natsbus": _result(1, p50_us=400.0, cpu_us=90.0), BASELINE: _result(1)},
        },
        {
            "key": "throughput/8/0",
            "scenario": "throughput",
            "payload": 0,
            "concurrency": 8,
            "results": {"raw": _result(1), "natsbus": _result(1100), BASELINE: _result(1000)},
        },
        {
            "key": "batch/64/0",
            "scenario": "batch",
            "payload": 0,
            "concurrency": 64,
            "results": {"raw": _result(1), "natsbus": _result(1), BASELINE: {"missing": "execute_many"}},
        },
    ]
    memory = {"natsbus": {"client_peak_kib": 2048}, BASELINE: {"client_peak_kib": 1024}}
    rows = {row["name"]: row for row in versus_baseline(cells, memory)}
    assert list(rows) == [
        "sequential p50, small payload",
        "throughput, 8 callers, small payload",
        "RSS, client, under load",
        "RSS, client, peak",
        "RSS, responder, peak",
    ]
    sequential = rows["sequential p50, small payload"]
    assert (sequential["metric"], sequential["ratio"], sequential["client_cpu_ratio"]) == ("p50_us", 0.8, 0.9)
    assert rows["throughput, 8 callers, small payload"]["ratio"] == 1.1
    assert (rows["RSS, client, peak"]["ratio"], rows["RSS, client, under load"]["ratio"]) == (2.0, None)


# -- children: the JSON library, the roles module ------------------------------------------


@pytest.fixture
def fake_orjson(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable stand-in ``orjson`` on PYTHONPATH, and a script saying which JSON library it gets."""
    (tmp_path / "orjson.py").write_text("")
    (tmp_path / "probe.py").write_text(
        "import sys\n"
        "def main(argv):\n"
        "    try:\n"
        "        import orjson\n"
        "    except ImportError:\n"
        "        print('json', *argv)\n"
        "    else:\n"
        "        print('orjson', *argv)\n"
        "    return 0\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit(main(sys.argv[1:]))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("json_lib", ["json", "orjson"])
def test_child_boot_hides_orjson_for_the_plain_install_json_library(fake_orjson: Path, json_lib: str) -> None:
    by_path = runner.child_argv(json_lib, str(fake_orjson / "probe.py"), ["client", "nats://x"])
    as_module = runner.child_argv(json_lib, "probe", ["responder", "nats://y"])
    outputs = [subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout for argv in (by_path, as_module)]
    assert outputs == [f"{json_lib} client nats://x\n", f"{json_lib} responder nats://y\n"]


def test_roles_module_finds_the_roles_of_either_layout(tmp_path: Path) -> None:
    (tmp_path / "old" / "natsbus").mkdir(parents=True)
    (tmp_path / "old" / "natsbus" / "_bench_roles.py").write_text("")
    assert runner.roles_module(str(ROOT)) == "natsbus.bench.roles"
    assert runner.roles_module(str(tmp_path / "old")) == "natsbus._bench_roles"
    assert runner.roles_module(str(tmp_path)) is None


def test_bench_refuses_a_baseline_without_a_natsbus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--baseline", str(tmp_path)]) == 2
    assert f"--baseline {tmp_path}: no natsbus package with a bench in it" in capsys.readouterr().err


def test_bench_refuses_orjson_when_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = runner.importlib.util.find_spec
    monkeypatch.setattr(
        runner.importlib.util,
        "find_spec",
        lambda name, package=None: None if name == "orjson" else find_spec(name, package),
    )
    assert main(["bench", "--json-lib", "orjson"]) == 2
    assert "--json-lib orjson needs orjson: pip install 'natsbus[fast]'" in capsys.readouterr().err


def test_bench_rejects_an_unknown_json_library(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--json-lib", "ujson"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ujson'" in capsys.readouterr().err


def test_the_bench_driver_runs_children_from_this_checkout() -> None:
    assert runner._child_env(runner._ROOT)["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert sys.executable == runner.child_argv("json", "x", [])[0]
