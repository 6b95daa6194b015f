"""The goals of the full benchmark, judged PASS or MISS from the figures of each profile.

Readers against the tutorial generator, the memory-mapped limit and (large samples) the memory
bandwidth, `fit` against arrays in memory and the tutorial's best configuration, conversion
against a plain copy, and the generator's private memory bounded by the batches in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .harness import LIMIT_NAME, MEMORY_NAME, MiB, Result
from .profiles import ProfileReport


@dataclass
class Goal:
    text: str
    value: float | None
    target: float
    results: list[Result] = field(default_factory=list)
    detail: str = ""
    ratio_hidden: bool = False  # `value` only decides the verdict; `detail` says what was measured

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        return "PASS" if self.value >= self.target else "MISS"

    @property
    def noisy(self) -> bool:
        return any(r.noisy for r in self.results)


def _find(results: list[Result], name: str) -> Result | None:
    return next((r for r in results if r.name == name), None)


def _ratio_goal(text: str, result: Result | None, attr: str, target: float) -> Goal:
    value = getattr(result, attr) if result is not None else None
    return Goal(text, value, target, [result] if result else [])


def _against_goal(text: str, result: Result | None, reference: Result | None, target: float) -> Goal:
    """`result` over `reference`, two figures of one section."""
    if result is None or reference is None or reference.samples_per_s <= 0:
        return Goal(text, None, target)
    return Goal(text, result.samples_per_s / reference.samples_per_s, target, [result, reference])


# (profile, reader, ratio attribute or the name of the reference figure, target, what the target is called)
READER_GOALS = (
    ("large", "HDF5 (global)", "vs_tutorial", 5, "tutorial"),
    ("large", "HDF5 (global)", "vs_limit", 1.0, "mmap limit"),
    ("large", "HDF5 (global)", MEMORY_NAME, 0.8, "memory bandwidth"),
    ("large", "Zarr (global)", "vs_tutorial", 4, "tutorial"),
    ("large", "Zarr (global)", MEMORY_NAME, 0.8, "memory bandwidth"),
    ("large", "Zarr zstd (global)", "vs_tutorial", 1, "tutorial"),
    ("small", "HDF5 (global)", "vs_tutorial", 50, "tutorial"),
    ("small", "Zarr (global)", "vs_tutorial", 50, "tutorial"),
    ("small", "HDF5 (global)", f"{LIMIT_NAME} (global)", 0.8, "mmap limit (global)"),
    ("small", "Zarr (global)", f"{LIMIT_NAME} (global)", 0.8, "mmap limit (global)"),
)


def reader_goals(rep: ProfileReport) -> list[Goal]:
    goals = []
    for profile, reader, reference, target, what in READER_GOALS:
        if profile != rep.profile.name:
            continue
        text, result = f"{profile}: {reader} >= {target}x {what}", _find(rep.readers, f"shardfeed {reader}")
        if reference.startswith("vs_"):
            goals.append(_ratio_goal(text, result, reference, target))
        else:
            goals.append(_against_goal(text, result, _find(rep.readers, reference), target))
    return goals


def other_goals(rep: ProfileReport) -> list[Goal]:
    name = rep.profile.name
    ours = [r for r in rep.fit if r.name.startswith("shardfeed")]
    best = max(ours, key=lambda r: r.samples_per_s) if ours else None
    goals = [
        Goal(
            f"{name}: fit, best shardfeed epoch time <= 1.25x arrays in memory (rate >= 0.8x)",
            best.vs_limit if best else None,
            0.8,
            [best, rep.fit[0]] if best else [],
            best.name if best else "",
        ),
        Goal(
            f"{name}: fit, best shardfeed >= 3x the tutorial's best fit configuration",
            best.vs_tutorial if best else None,
            3,
            [best] if best else [],
            best.name if best else "",
        ),
    ]
    for label in ("HDF5", "Zarr"):
        goals.append(
            _ratio_goal(
                f"{name}: convert to {label} (2 workers) >= 0.7x plain copy",
                _find(rep.convert, f"convert to {label}, 2 workers"),
                "vs_limit",
                0.7,
            )
        )
    goals.append(memory_goal(rep))
    return goals


def memory_goal(rep: ProfileReport) -> Goal:
    """Bounded: 4x the data adds at most two batches (+8 MiB slack) of private memory."""
    small, large = rep.memory
    extra = large["anon_growth"] - small["anon_growth"]
    allowed = 2 * large["batch_nbytes"] + 8 * MiB
    detail = (
        f"private growth {small['anon_growth'] / MiB:.1f} MiB for {small['samples']:,} samples, "
        f"{large['anon_growth'] / MiB:.1f} MiB for {large['samples']:,}; a batch is "
        f"{large['batch_nbytes'] / MiB:.1f} MiB"
    )
    return Goal(
        f"{rep.profile.name}: generator memory bounded by batches in flight",
        allowed - extra,
        0,
        detail=detail,
        ratio_hidden=True,
    )


def evaluate(reports: list[ProfileReport]) -> list[Goal]:
    """Every goal of every profile, in report order."""
    return [g for rep in reports for g in reader_goals(rep) + other_goals(rep)]


def goals_table(goals: list[Goal]) -> str:
    lines = ["| goal | measured | result |", "|---|---|---|"]
    for g in goals:
        value = "-" if g.value is None else f"{g.value:.2f}x"
        if g.detail:
            value = g.detail if g.ratio_hidden else f"{value} ({g.detail})"
        verdict = g.verdict + (" (noisy run)" if g.noisy else "")
        lines.append(f"| {g.text} | {value} | {verdict} |")
    return "\n".join(lines)
