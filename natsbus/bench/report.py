"""What ``natsbus bench`` reports: the targets with their verdicts, the tables, the chart."""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .plan import (
    BASELINE,
    HANDLER_WORK_US,
    NATSBUS_TO_RAW,
    NATSBUS_X2,
    NO_STORE,
    RAW_TO_NATSBUS,
    RAW_X2,
    Options,
    size_label,
)
from .roles import BATCH_IN_FLIGHT, EXTRA_TYPES, LARGE_PAYLOAD, NATSBUS, NATSBUS_TYPES, RAW

# -- targets -------------------------------------------------------------------------

#: Throughput, natsbus / raw, by callers: 8 and 32 are what a gunicorn worker's threads
#: make; other counts (256) are for information.
THROUGHPUT_GOALS: Dict[int, float] = {8: 0.95, 32: 0.75, 64: 0.75}
#: Sequential ``execute()`` p50, natsbus / raw (at most).
P50_GOAL = 1.10
#: ``execute_many`` throughput, natsbus / raw.
EXECUTE_MANY_GOAL = 1.0
#: RSS, natsbus / raw (at most): the client under load, the worker at its peak.
CLIENT_RSS_GOAL = 1.25
WORKER_RSS_GOAL = 1.5
#: natsbus against itself: 256 callers vs the reference callers, 200 more types vs none.
GROWTH_GOAL = 0.8
TYPES_GOAL = 0.95
#: The pool's default reply store on vs off (natsbus against itself): "nothing visible".
STORE_GOAL = 0.95


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _target(
    name: str,
    ratio: Optional[float],
    goal: Optional[Tuple[str, float]],
    raw: str,
    natsbus: str,
    note: str = "",
    result: Optional[str] = None,
    cell: Optional[str] = None,
) -> Dict[str, Any]:
    """A row of the targets table; ``cell`` and ``goal`` let the chart draw its target line."""
    if result is None:
        if goal is None:
            result = "-"
        elif ratio is None:
            result = "MISS"
        else:
            op, value = goal
            result = "PASS" if (ratio >= value if op == ">=" else ratio <= value) else "MISS"
    return {
        "name": name,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "target": f"{goal[0]} {goal[1]:.2f}x" if goal else "",
        "goal": goal[1] if goal else None,
        "cell": cell,
        "result": result,
        "raw": raw,
        "natsbus": natsbus,
        "note": note,
    }


def _fmt_rate(cell: Optional[Dict[str, Any]]) -> str:
    return f"{cell['throughput']:,.0f} req/s" if cell and "throughput" in cell else "-"


def _fmt_us(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:,.1f} ms" if value >= 10_000 else f"{value:,.0f} us"


def _fmt_switches(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_kib(kib: Optional[int]) -> str:
    return f"{kib / 1024:,.1f} MiB" if kib else "-"


def _fmt_ratio(ratio: Optional[float]) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def _errors_note(*cells: Optional[Dict[str, Any]]) -> str:
    notes = [f"{c['errors']} errors ({c['first_error']})" for c in cells if c and c.get("errors")]
    notes += ["hit the request cap" for c in cells if c and c.get("capped")]
    return "; ".join(notes)


def _gate(target: Dict[str, Any], *cells: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A measurement with errors does not pass, whatever its ratio."""
    if target["result"] == "PASS" and any(c and c.get("errors") for c in cells):
        target["result"] = "MISS"
    return target


def _val(cell: Optional[Dict[str, Any]], key: str) -> Optional[float]:
    value = cell.get(key) if cell else None
    return float(value) if value is not None else None


def _latency_text(cell: Optional[Dict[str, Any]]) -> str:
    return f"{_fmt_us(_val(cell, 'p50_us'))} (p99 {_fmt_us(_val(cell, 'p99_us'))})"


def cell_label(scenario: str, concurrency: int, payload: int) -> str:
    """``throughput, 64 callers, small payload`` and the like: how the tables name a measurement."""
    label = f"{size_label(payload)} payload"
    if scenario == "sequential":
        return f"sequential p50, {label}"
    if scenario == "batch":
        return f"execute_many, {concurrency} in flight, {label}"
    return f"throughput, {concurrency} callers, {label}"


def targets(
    options: Options, cells: Dict[str, Dict[str, Dict[str, Any]]], memory: Dict[str, Dict[str, int]]
) -> List[Dict[str, Any]]:
    """The issue's targets, each as a ratio natsbus / raw from this run; then informative rows."""
    rows: List[Dict[str, Any]] = []
    ref, last = options.reference, options.concurrency[-1]

    def get(key: str, impl: str) -> Optional[Dict[str, Any]]:
        return cells.get(key, {}).get(impl)

    def rate_row(name: str, key: str, goal: Optional[Tuple[str, float]], impl: str = NATSBUS, note: str = "") -> Any:
        raw, nb = get(key, RAW), get(key, impl)
        ratio = _ratio(_val(nb, "throughput"), _val(raw, "throughput"))
        notes = "; ".join(x for x in (note, _errors_note(raw, nb)) if x)
        return _gate(_target(name, ratio, goal, _fmt_rate(raw), _fmt_rate(nb), notes, cell=key), raw, nb)

    def p50_row(name: str, key: str, goal: Optional[Tuple[str, float]], impl: str = NATSBUS, note: str = "") -> Any:
        raw, nb = get(key, RAW), get(key, impl)
        ratio = _ratio(_val(nb, "p50_us"), _val(raw, "p50_us"))
        notes = "; ".join(x for x in (note, _errors_note(raw, nb)) if x)
        return _gate(_target(name, ratio, goal, _latency_text(raw), _latency_text(nb), notes, cell=key), raw, nb)

    for index, size in enumerate(options.payload_sizes):
        for n in options.concurrency:
            if n in THROUGHPUT_GOALS:
                key = f"throughput/{n}/{size}"
                rows.append(rate_row(cell_label("throughput", n, size), key, (">=", THROUGHPUT_GOALS[n])))
        key = f"sequential/1/{size}"
        rows.append(p50_row(cell_label("sequential", 1, size), key, ("<=", P50_GOAL)))
        key = f"batch/{BATCH_IN_FLIGHT}/{size}"
        name = cell_label("batch", BATCH_IN_FLIGHT, size)
        nb = get(key, NATSBUS)
        if nb is None or "missing" in nb:
            goal = (">=", EXECUTE_MANY_GOAL)
            rows.append(_target(name, None, goal, "-", "n/a (execute_many missing)", result="n/a", cell=key))
        else:
            rows.append(rate_row(name, key, (">=", EXECUTE_MANY_GOAL)))
        for n in options.concurrency:
            if n not in THROUGHPUT_GOALS:
                rows.append(rate_row(cell_label("throughput", n, size), f"throughput/{n}/{size}", None))
        if index == 0:  # the cross diagnostics: which side a gap is on
            for impl, side in ((RAW_TO_NATSBUS, "responder"), (NATSBUS_TO_RAW, "client")):
                note = f"diagnostic: only the {side} is natsbus"
                key = f"sequential/1/{size}"
                rows.append(p50_row(f"{impl}: {cell_label('sequential', 1, size)}", key, None, impl, note))
                key = f"throughput/{ref}/{size}"
                rows.append(rate_row(f"{impl}: {cell_label('throughput', ref, size)}", key, None, impl, note))

    raw_mem, nb_mem = memory.get(RAW, {}), memory.get(NATSBUS, {})
    for key, name, limit in (
        (
            "client_under_load_kib",
            f"client RSS under load, {ref} callers, {size_label(options.payload_sizes[0])}",
            CLIENT_RSS_GOAL,
        ),
        ("responder_peak_kib", "worker RSS, peak", WORKER_RSS_GOAL),
    ):
        ratio = _ratio(_val(nb_mem, key), _val(raw_mem, key))
        rows.append(_target(name, ratio, ("<=", limit), _fmt_kib(raw_mem.get(key)), _fmt_kib(nb_mem.get(key))))

    if last > ref:
        for size in options.payload_sizes:
            hi, lo = get(f"throughput/{last}/{size}", NATSBUS), get(f"throughput/{ref}/{size}", NATSBUS)
            raw_hi, raw_lo = get(f"throughput/{last}/{size}", RAW), get(f"throughput/{ref}/{size}", RAW)
            raw_ratio = _ratio(_val(raw_hi, "throughput"), _val(raw_lo, "throughput"))
            row = _target(
                f"natsbus {last} vs {ref} callers, {size_label(size)} payload",
                _ratio(_val(hi, "throughput"), _val(lo, "throughput")),
                (">=", GROWTH_GOAL),
                _fmt_ratio(raw_ratio),
                f"{_fmt_rate(hi)} vs {_fmt_rate(lo)}",
                "natsbus vs itself; raw column: raw's own ratio",
            )
            rows.append(_gate(row, hi, lo))

    key = f"sequential/1/{LARGE_PAYLOAD}"
    raw, nb = get(key, RAW), get(key, NATSBUS)
    works = bool(nb and nb.get("requests") and not nb.get("errors"))
    raw_works = bool(raw and raw.get("requests") and not raw.get("errors"))
    rows.append(
        _target(
            f"{size_label(LARGE_PAYLOAD)} payload works (sequential p50)",
            _ratio(_val(nb, "p50_us"), _val(raw, "p50_us")),
            None,
            _fmt_us(_val(raw, "p50_us")) if raw_works else "failed",
            _fmt_us(_val(nb, "p50_us")) if works else "failed",
            "; ".join(
                f"{impl}: {c['errors']} errors ({c['first_error']})"
                for impl, c in ((RAW, raw), (NATSBUS, nb))
                if c and c.get("errors")
            )
            or "the target is that it works; the ratio is for information",
            result="PASS" if works else "MISS",
        )
    )

    key = f"types/{ref}/0"
    one, many = get(key, NATSBUS), get(key, NATSBUS_TYPES)
    row = _target(
        f"{EXTRA_TYPES} more registered types vs none, {ref} callers",
        _ratio(_val(many, "throughput"), _val(one, "throughput")),
        (">=", TYPES_GOAL),
        _fmt_rate(one),
        _fmt_rate(many),
        f"natsbus vs itself: raw column 1 type, natsbus column {EXTRA_TYPES + 1}",
    )
    rows.append(_gate(row, one, many))

    for key, scenario in ((f"store/{ref}/0", "throughput"), (f"store-batch/{BATCH_IN_FLIGHT}/0", "batch")):
        on, off = get(key, NATSBUS), get(key, NO_STORE)
        if on is None and off is None:
            continue  # execute_many missing: no batch cell
        label = cell_label(scenario, ref if scenario == "throughput" else BATCH_IN_FLIGHT, 0)
        row = _target(
            f"default reply store on vs off: {label}",
            _ratio(_val(on, "throughput"), _val(off, "throughput")),
            (">=", STORE_GOAL),
            _fmt_rate(off),
            _fmt_rate(on),
            "natsbus vs itself: raw column idempotency=None, natsbus column the default",
        )
        rows.append(_gate(row, on, off))

    key = f"processes/{ref}/0"
    raw1, raw2, nb1, nb2 = (get(key, impl) for impl in (RAW, RAW_X2, NATSBUS, NATSBUS_X2))
    if nb2 is not None:
        work = f"{HANDLER_WORK_US} us of CPU per request"
        rows.append(
            _gate(
                _target(
                    f"2 worker processes, {ref} callers, {work}",
                    _ratio(_val(nb2, "throughput"), _val(raw2, "throughput")),
                    None,
                    _fmt_rate(raw2),
                    _fmt_rate(nb2),
                    "both sides with 2 responder processes",
                ),
                raw2,
                nb2,
            )
        )
        rows.append(
            _gate(
                _target(
                    f"2 worker processes vs 1, {ref} callers, {work}",
                    _ratio(_val(nb2, "throughput"), _val(nb1, "throughput")),
                    None,
                    _fmt_ratio(_ratio(_val(raw2, "throughput"), _val(raw1, "throughput"))),
                    f"{_fmt_rate(nb2)} vs {_fmt_rate(nb1)}",
                    "natsbus vs itself; raw column: raw's own ratio, 2 responders vs 1",
                ),
                nb1,
                nb2,
            )
        )
    return rows


def versus_baseline(cells: List[Dict[str, Any]], memory: Dict[str, Dict[str, int]]) -> List[Dict[str, Any]]:
    """natsbus / the baseline natsbus for every cell that measured both, then memory; no targets.

    The ratio is of throughput (higher is better), or of the p50 for a
    sequential cell (lower is better); the CPU ratios are per request
    (lower is better), steadier than rates on a shared machine.
    """
    rows: List[Dict[str, Any]] = []
    for cell in cells:
        nb, base = cell["results"].get(NATSBUS), cell["results"].get(BASELINE)
        if not nb or not base or "missing" in nb or "missing" in base:
            continue
        metric = "p50_us" if cell["scenario"] == "sequential" else "throughput"
        fmt = _latency_text if metric == "p50_us" else _fmt_rate
        rows.append(
            {
                "name": cell_label(cell["scenario"], cell["concurrency"], cell["payload"]),
                "cell": cell["key"],
                "metric": metric,
                "ratio": _round(_ratio(_val(nb, metric), _val(base, metric))),
                "client_cpu_ratio": _round(_ratio(_val(nb, "client_cpu_us"), _val(base, "client_cpu_us"))),
                "responder_cpu_ratio": _round(_ratio(_val(nb, "responder_cpu_us"), _val(base, "responder_cpu_us"))),
                "baseline": fmt(base),
                "natsbus": fmt(nb),
                "note": _errors_note(base, nb),
            }
        )
    nb_mem, base_mem = memory.get(NATSBUS, {}), memory.get(BASELINE, {})
    for key, name in _MEMORY_ROWS:
        rows.append(
            {
                "name": f"RSS, {name}",
                "cell": None,
                "metric": key,
                "ratio": _round(_ratio(_val(nb_mem, key), _val(base_mem, key))),
                "client_cpu_ratio": None,
                "responder_cpu_ratio": None,
                "baseline": _fmt_kib(base_mem.get(key)),
                "natsbus": _fmt_kib(nb_mem.get(key)),
                "note": "",
            }
        )
    return rows


def _round(ratio: Optional[float]) -> Optional[float]:
    return round(ratio, 3) if ratio is not None else None


_MEMORY_ROWS = (
    ("client_under_load_kib", "client, under load"),
    ("client_peak_kib", "client, peak"),
    ("responder_peak_kib", "responder, peak"),
)


# -- output ---------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> List[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cols: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cols, widths))]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _json_text(meta: Dict[str, Any]) -> str:
    plain = meta.get("json_plain_install", "json")
    if meta["json"] == plain:
        return f"JSON library: {meta['json']} (a plain install's; --json-lib orjson compares)"
    return f"JSON library: {meta['json']} (--json-lib; a plain install uses {plain}, which the targets are for)"


def _baseline_text(meta: Dict[str, Any]) -> str:
    base = meta["baseline"]
    git = f", git {base['git']}" if base.get("git") else ""
    ours = f" (git {meta['natsbus_git']})" if meta.get("natsbus_git") else ""
    return f"baseline: natsbus {base['natsbus']} from {base['path']}{git}; this natsbus{ours}"


def render(report: Dict[str, Any]) -> str:
    """The printed report: the targets (ratios first), the baseline's comparison, then every measurement."""
    meta = report["meta"]
    lines = [
        f"natsbus bench: natsbus {meta['natsbus']} vs raw nats-py {meta['nats_py']} "
        f"(Python {meta['python']}, {meta['cpus']} CPUs)",
        _json_text(meta),
        f"server: {meta['server']}",
        f"each measurement: {meta['duration']:g} s per implementation in {meta['rounds']} alternating "
        f"round(s) ({meta['order']}); WorkerPool max_workers {meta['max_workers']}",
    ]
    if meta.get("baseline"):
        lines.append(_baseline_text(meta))
    if meta.get("quick"):
        lines.append("--quick: a very short run; the numbers are noise")
    lines += ["", "Targets: natsbus / raw nats-py, same run"]
    rows = [
        [_fmt_ratio(t["ratio"]), t["target"], t["result"], t["name"], t["raw"], t["natsbus"], t["note"]]
        for t in report["targets"]
    ]
    lines += _table(["ratio", "target", "result", "measurement", "raw", "natsbus", "note"], rows, right=(0,))
    if report.get("baseline"):
        lines += [
            "",
            "Before and after: natsbus / baseline natsbus, same run "
            "(req/s: higher is better; p50, CPU and RSS: lower is better)",
        ]
        rows = [
            [
                _fmt_ratio(b["ratio"]),
                _fmt_ratio(b["client_cpu_ratio"]),
                _fmt_ratio(b["responder_cpu_ratio"]),
                b["name"],
                b["baseline"],
                b["natsbus"],
                b["note"],
            ]
            for b in report["baseline"]
        ]
        headers = ["ratio", "client CPU/req", "responder CPU/req", "measurement", "baseline", "natsbus", "note"]
        lines += _table(headers, rows, right=(0, 1, 2))
    lines += ["", "Measurements"]
    rows = []
    for cell in report["cells"]:
        for impl, s in cell["results"].items():
            row = [cell["scenario"], size_label(cell["payload"]), str(cell["concurrency"]), impl]
            if "missing" in s:
                rows.append([*row, "n/a", "", "", "", "", "", "", "", "", f"{s['missing']} missing"])
                continue
            runs = " / ".join(f"{r['throughput']:,.0f}" for r in s["runs"])
            note = ", ".join(x for x in (f"rounds: {runs}", "capped" if s["capped"] else "") if x)
            rows.append(
                [
                    *row,
                    f"{s['throughput']:,.0f}",
                    _fmt_us(s["p50_us"]),
                    _fmt_us(s["p99_us"]),
                    _fmt_us(s["client_cpu_us"]),
                    _fmt_us(s["responder_cpu_us"]),
                    _fmt_switches(s.get("client_switches")),
                    _fmt_switches(s.get("responder_switches")),
                    f"{s['requests']:,}",
                    str(s["errors"]),
                    note,
                ]
            )
    headers = [
        "scenario",
        "payload",
        "callers",
        "implementation",
        "req/s",
        "p50",
        "p99",
        "client CPU/req",
        "responder CPU/req",
        "client csw/req",
        "responder csw/req",
        "requests",
        "errors",
        "note",
    ]
    lines += _table(headers, rows, right=(2, 4, 5, 6, 7, 8, 9, 10, 11, 12))
    mem = report["memory"]
    impls = [impl for impl in (RAW, NATSBUS, BASELINE) if impl in mem]
    lines += [""]
    lines += _table(
        ["memory (RSS)", *impls],
        [[label, *(_fmt_kib(mem[impl].get(key)) for impl in impls)] for key, label in _MEMORY_ROWS],
        right=tuple(range(1, len(impls) + 1)),
    )
    return "\n".join(lines) + "\n"


_COLOURS = {RAW: "#999999", NATSBUS: "#2a6fbb", BASELINE: "#9ecae1"}
_LABELS = {RAW: "raw nats-py", NATSBUS: "natsbus", BASELINE: "baseline natsbus"}


def draw_chart(report: Dict[str, Any], path: str) -> None:
    """A PNG: throughput and sequential latency, raw beside natsbus (and the baseline), ratios on top."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig = chart_figure(report, plt)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_figure(report: Dict[str, Any], plt: Any) -> Any:
    """The chart's figure, drawn with ``matplotlib.pyplot`` ``plt``.

    A dashed red line over a group marks its target (the goal times raw's
    figure); a ``--quick`` run says in red, in the title and across the
    figure, that its numbers are noise.
    """
    by_key = {c["key"]: c for c in report["cells"]}
    goals = {t["cell"]: t["goal"] for t in report["targets"] if t.get("cell") and t.get("goal") is not None}
    meta = report["meta"]
    impls = [RAW, NATSBUS, BASELINE] if meta.get("baseline") else [RAW, NATSBUS]
    width = 0.8 / len(impls)

    def bars(ax: Any, groups: List[Tuple[str, str]], metric: str, unit: str) -> None:
        labels: List[str] = []
        values: Dict[str, List[float]] = {impl: [] for impl in impls}
        lines: List[Tuple[int, float]] = []
        for key, label in groups:
            results = by_key[key]["results"]
            found = [results.get(impl, {}) for impl in impls]
            if any("missing" in r or r.get(metric) is None for r in found[:2]):
                continue  # a baseline without it (execute_many, say) only lacks its own bar
            if key in goals:
                lines.append((len(labels), found[0][metric] * goals[key]))
            labels.append(label)
            for impl, result in zip(impls, found):
                values[impl].append(result.get(metric) or 0.0)
        xs = list(range(len(labels)))
        for i, impl in enumerate(impls):
            offsets = [x - 0.4 + width * (i + 0.5) for x in xs]
            ax.bar(offsets, values[impl], width, label=_LABELS[impl], color=_COLOURS[impl])
            if impl != RAW:
                for x, a, b in zip(offsets, values[RAW], values[impl]):
                    if a and b:
                        ax.annotate(f"{b / a:.2f}x", (x, b), ha="center", va="bottom", fontsize=7)
        for n, (x, level) in enumerate(lines):
            ax.hlines(
                level, x - 0.45, x + 0.45, colors="#d62728", linestyles="dashed", label="target" if n == 0 else None
            )
        ax.margins(y=0.15)  # room for the ratio labels
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(unit)

    throughput, latency = [], []
    for cell in report["cells"]:
        if (
            NATSBUS not in cell["impls"]
            or RAW not in cell["impls"]
            or cell["payload"] == LARGE_PAYLOAD
            or cell["key"].startswith("processes/")  # a handler with work: not like for like with the rest
        ):
            continue
        size = size_label(cell["payload"])
        if cell["scenario"] == "throughput":
            throughput.append((cell["key"], f"{cell['concurrency']} callers\n{size}"))
        elif cell["scenario"] == "batch":
            throughput.append((cell["key"], f"execute_many\n{size}"))
        else:
            latency.append((cell["key"], f"sequential\n{size}"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 1]})
    bars(left, throughput, "throughput", "requests per second")
    left.set_title("Throughput (higher is better)")
    bars(right, latency, "p50_us", "microseconds")
    right.set_title("Sequential p50 latency (lower is better)")
    title = (
        f"natsbus {meta['natsbus']} vs raw nats-py {meta['nats_py']}, JSON {meta['json']} "
        f"(ratio = natsbus / raw; dashed: target)"
    )
    if meta.get("quick"):
        title = "--quick run: the numbers are noise\n" + title
        fig.text(
            0.5,
            0.45,
            "QUICK RUN: NOISE",
            fontsize=56,
            color="#d62728",
            alpha=0.18,
            ha="center",
            va="center",
            rotation=20,
        )
    fig.suptitle(title, color="#d62728" if meta.get("quick") else "black")
    handles, labels = [], []
    for ax in (left, right):  # the target line may be on either side only
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.9 if meta.get("quick") else 0.94))
    return fig
