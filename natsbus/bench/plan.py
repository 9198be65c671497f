"""What ``natsbus bench`` measures: its options and the cells of its plan."""

from __future__ import annotations

from typing import List, Optional, Tuple

import attrs

from .roles import BATCH_IN_FLIGHT, LARGE_PAYLOAD, NATSBUS, NATSBUS_TYPES, RAW

# -- the bench side: plan and run -------------------------------------------------------


@attrs.frozen
class Options:
    """What to measure (from the command line)."""

    server: Optional[str] = None
    duration: float = 3.0
    rounds: int = 2
    concurrency: Tuple[int, ...] = (64, 256)
    payload_sizes: Tuple[int, ...] = (0, 10240)
    batch_size: int = 1024
    large_requests: int = 10
    json_path: Optional[str] = None
    chart_path: Optional[str] = None
    quick: bool = False

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


@attrs.frozen
class Cell:
    """One measurement: a scenario, compared between two implementations."""

    key: str
    scenario: str  # sequential | throughput | batch
    payload: int
    concurrency: int
    impls: Tuple[str, str] = (RAW, NATSBUS)
    max_requests: Optional[int] = None
    duration: Optional[float] = None


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
    """The main cells (memory is read after them), then the growth checks."""
    main: List[Cell] = []
    for size in options.payload_sizes:
        main.append(Cell(f"sequential/1/{size}", "sequential", size, 1))
        for n in options.concurrency:
            main.append(Cell(f"throughput/{n}/{size}", "throughput", size, n))
        if execute_many:
            main.append(Cell(f"batch/{BATCH_IN_FLIGHT}/{size}", "batch", size, BATCH_IN_FLIGHT))
    first = options.concurrency[0]
    growth = [
        Cell(f"types/{first}/0", "throughput", 0, first, impls=(NATSBUS, NATSBUS_TYPES)),
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
