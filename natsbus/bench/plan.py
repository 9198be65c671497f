"""What ``natsbus bench`` measures: its options and the cells of its plan."""

from __future__ import annotations

from typing import List, Optional, Tuple

import attrs

from .roles import BATCH_IN_FLIGHT, LARGE_PAYLOAD, NATSBUS, NATSBUS_TYPES, RAW

#: Another natsbus (``--baseline DIR``), measured beside this one in the same run.
BASELINE = "baseline"
#: Diagnostics, one side each: they tell whether a gap is the client's or the worker's.
RAW_TO_NATSBUS = "raw client, natsbus responder"
NATSBUS_TO_RAW = "natsbus client, raw responder"
CROSS = (RAW_TO_NATSBUS, NATSBUS_TO_RAW)

#: natsbus against itself with the pool's default reply store turned off
#: (``WorkerPool(idempotency=None)``): what remembering command replies costs.
NO_STORE = "natsbus, no reply store"
#: Alternating rounds of the reply-store rows, each as long as a round of the others.
STORE_ROUNDS = 6
#: Each with two responder processes (the same client load): the processes figure.
RAW_X2 = "raw, 2 responder processes"
NATSBUS_X2 = "natsbus, 2 worker processes"
#: The responders' handler spends this much CPU (microseconds) per request in the
#: processes figure, on both sides: work a second core can share.
HANDLER_WORK_US = 200

#: Callers per throughput run: a gunicorn worker's thread counts (8, 32), then 64 and 256.
CONCURRENCY = (8, 32, 64, 256)
#: Memory under load, the cross diagnostics, the types check and the growth check run
#: at this many callers (at the first of ``--concurrency`` when it is not among them).
REFERENCE_CALLERS = 64
#: The JSON libraries natsbus.codec can use; a plain install (no ``fast`` extra) uses "json".
JSON_LIBS = ("json", "orjson")
PLAIN_JSON = "json"

# -- the bench side: plan and run -------------------------------------------------------


@attrs.frozen
class Options:
    """What to measure (from the command line)."""

    server: Optional[str] = None
    duration: float = 3.0
    rounds: int = 2
    concurrency: Tuple[int, ...] = CONCURRENCY
    payload_sizes: Tuple[int, ...] = (0, 10240)
    batch_size: int = 1024
    large_requests: int = 10
    json_path: Optional[str] = None
    chart_path: Optional[str] = None
    quick: bool = False
    json_lib: str = attrs.field(default=PLAIN_JSON, validator=attrs.validators.in_(JSON_LIBS))
    baseline: Optional[str] = None  # a directory holding another natsbus package

    @property
    def run_duration(self) -> float:
        """Seconds of one implementation's run in one round."""
        return self.duration / self.rounds

    @property
    def warmup(self) -> float:
        return min(0.5, max(0.05, self.run_duration / 4))

    @property
    def max_requests(self) -> int:
        return int(100_000 * max(1.0, self.run_duration))

    @property
    def reference(self) -> int:
        """The callers of the memory reading, the diagnostics and the natsbus-only checks."""
        return REFERENCE_CALLERS if REFERENCE_CALLERS in self.concurrency else self.concurrency[0]


@attrs.frozen
class Cell:
    """One measurement: a scenario, compared between implementations (raw first)."""

    key: str
    scenario: str  # sequential | throughput | batch
    payload: int
    concurrency: int
    impls: Tuple[str, ...] = (RAW, NATSBUS)
    max_requests: Optional[int] = None
    duration: Optional[float] = None  # per round
    work_us: int = 0  # CPU each handler spends per request (both sides)
    rounds: Optional[int] = None  # alternating rounds, when not --rounds


def size_label(size: int) -> str:
    """``small``, ``10 KiB``, ``1 MiB``, or bytes."""
    if size <= 0:
        return "small"
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def plan(options: Options, execute_many: bool) -> Tuple[List[Cell], List[Cell]]:
    """The main cells (memory is read after them), then natsbus against itself and the processes figure.

    Every main cell measures raw and natsbus (and the baseline natsbus, with
    ``--baseline``). The first payload size's sequential cell and its cell at
    the reference callers also measure the two cross pairs, in the same
    alternating rounds, so their ratios to raw are like for like.
    """
    ours = (NATSBUS, BASELINE) if options.baseline else (NATSBUS,)
    ref = options.reference
    main: List[Cell] = []
    for index, size in enumerate(options.payload_sizes):
        cross = CROSS if index == 0 else ()
        main.append(Cell(f"sequential/1/{size}", "sequential", size, 1, impls=(RAW, *cross, *ours)))
        for n in options.concurrency:
            impls = (RAW, *(cross if n == ref else ()), *ours)
            main.append(Cell(f"throughput/{n}/{size}", "throughput", size, n, impls=impls))
        if execute_many:
            key = f"batch/{BATCH_IN_FLIGHT}/{size}"
            main.append(Cell(key, "batch", size, BATCH_IN_FLIGHT, impls=(RAW, *ours)))
    # The store's difference is a few percent, as large as a round's noise here: more rounds.
    store_rounds = None if options.quick else max(options.rounds, STORE_ROUNDS)
    growth = [
        Cell(f"types/{ref}/0", "throughput", 0, ref, impls=(NATSBUS, NATSBUS_TYPES)),
        Cell(f"store/{ref}/0", "throughput", 0, ref, impls=(NATSBUS, NO_STORE), rounds=store_rounds),
        *(
            [
                Cell(
                    f"store-batch/{BATCH_IN_FLIGHT}/0",
                    "batch",
                    0,
                    BATCH_IN_FLIGHT,
                    impls=(NATSBUS, NO_STORE),
                    rounds=store_rounds,
                )
            ]
            if execute_many
            else []
        ),
        Cell(
            f"processes/{ref}/0",
            "throughput",
            0,
            ref,
            impls=(RAW, RAW_X2, NATSBUS, NATSBUS_X2),
            work_us=HANDLER_WORK_US,
        ),
        Cell(
            f"sequential/1/{LARGE_PAYLOAD}",
            "sequential",
            LARGE_PAYLOAD,
            1,
            max_requests=max(1, options.large_requests // options.rounds),
            duration=min(2.0, options.run_duration),
        ),
    ]
    return main, growth
