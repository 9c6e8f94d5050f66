"""Two saved ``appliance bench`` reports side by side: two units, two software versions, or one unit twice.

Per stage (and per item, and per tick) the two medians and their difference against a tolerance (10 %), and the
CPU reference each run measured in its slack; a median of fewer than 30 samples is shown but not judged. When the
references differ, the CPU itself ran at different speeds (other load, clock scaling, throttling, a shared virtual
host) and stage times differ by about as much for that reason alone; the comparison then also gives each
difference with the machine's share taken out, and says which it was, so nobody blames a software version for a
slow afternoon on the host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

TOLERANCE = 0.10
NOISE_FLOOR_MS = 0.01   # medians of a few microseconds (capture, audio) move by timer and scheduler noise alone
# A median of fewer samples than this is too uncertain to judge against 10 % (publishing runs once per 10 s
# window: 12 times in a 120 s run, where one slow call moves the median by more than that); shown, not judged.
MIN_SAMPLES = 30
STEADY = 0.05           # CPU references (two runs, or the halves of one) closer than this: the same speed
# Stages whose work per tick varies (faces, VAD chunks): judged per item, their per-tick median mixes amounts of work.
PER_ITEM = ("expression", "vad")
# A model stage's own split (perception/stage.py), shown beside its stage: the stage's total is what is judged.
PART_NAMES = {"pre": "pre-process", "model": "network", "post": "post-process"}


@dataclass(frozen=True)
class Row:
    name: str
    a_ms: float
    b_ms: float
    difference: float           # |a - b| / min(a, b): symmetric, so A-vs-B and B-vs-A agree
    within: bool | None         # None: shown, not judged (see ``why``)
    adjusted: float | None      # the same, after dividing each side by its run's CPU reference
    samples: int = 0            # the fewer of the two runs' sample counts
    why: str = ""               # why a row is not judged

    @property
    def judged(self) -> str:
        return self.why if self.within is None else "yes" if self.within else "**no**"


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    tolerance: float
    reference_ms: tuple[float, float] | None     # CPU reference p50 of A and of B
    drift: tuple[float, float] | None            # each run's own change of CPU speed, second half vs first

    @property
    def differing(self) -> list[str]:
        return [r.name for r in self.rows if r.within is False]

    @property
    def machine_difference(self) -> float | None:
        if not self.reference_ms:
            return None
        a, b = self.reference_ms
        return abs(a - b) / min(a, b)

    @property
    def steady(self) -> bool:
        """Both runs saw the same CPU speed, and neither saw it change: the medians can be compared as they are."""
        return (self.machine_difference is not None and self.machine_difference <= STEADY
                and all(abs(d) <= STEADY for d in self.drift or ()))

    @property
    def verdict(self) -> str:
        """``same``, ``machine`` (differences that the CPU's own change of speed accounts for) or ``differs``."""
        if not self.differing:
            return "same"
        if not self.steady and self.reference_ms and all(
                r.adjusted is not None and r.adjusted <= self.tolerance for r in self.rows if r.within is False):
            return "machine"
        return "differs"

    def summary(self) -> str:
        tol = f"{100 * self.tolerance:g}%"
        if self.verdict == "same":
            text = f"every median within {tol} (or {NOISE_FLOOR_MS} ms)"
        elif self.verdict == "machine":
            text = (f"not within {tol}: {', '.join(self.differing)}; but every difference is within {tol} once the "
                    f"CPU's own change of speed is taken out: the machine ran at another speed, re-run on a quiet "
                    f"machine before comparing")
        elif self.reference_ms and not self.steady:
            text = (f"not within {tol}: {', '.join(self.differing)}; the CPU's speed changed too, so part of it is "
                    f"the machine: re-run on a quiet machine to tell how much")
        else:
            text = f"not within {tol}: {', '.join(self.differing)}"
        if self.reference_ms and not self.steady:
            text += (f" (CPU reference {self.reference_ms[0]:.3f} vs {self.reference_ms[1]:.3f} ms, drift within "
                     f"the runs {', '.join(f'{100 * d:+.1f}%' for d in self.drift)})")
        return text

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "summary": self.summary(), "tolerance": self.tolerance,
                "noise_floor_ms": NOISE_FLOOR_MS, "min_samples": MIN_SAMPLES, "steady": self.steady,
                "machine_difference": None if self.machine_difference is None else round(self.machine_difference, 4),
                "reference_ms": self.reference_ms, "drift": self.drift,
                "rows": [asdict(r) for r in self.rows]}


def _medians(report: dict) -> dict[str, tuple[float, int]]:
    """name: (median ms, number of samples behind it)."""
    out = {s: (p["p50_ms"], p.get("calls", MIN_SAMPLES)) for s, p in report["stages"].items() if p.get("calls", 1)}
    # per item: one sample per tick that had items (the tick's time / its items)
    ticks_with = {s: report["stages"].get(s, {}).get("calls", MIN_SAMPLES) for s in report.get("per_item", {})}
    out |= {f"{s} per item": (p["p50_ms"], ticks_with[s]) for s, p in report.get("per_item", {}).items()
            if p.get("items", 1)}
    out |= {f"{s} {PART_NAMES[part]}": (p[part]["p50_ms"], -1) for s, p in report.get("parts", {}).items()
            for part in PART_NAMES}
    return out | {"end_to_end": (report["end_to_end"]["p50_ms"], report.get("ticks", MIN_SAMPLES))}


def _reference(report: dict) -> dict | None:
    ref = report.get("cpu_reference")
    return ref if ref and ref.get("samples") and ref.get("p50_ms") else None


def _difference(a: float, b: float) -> float:
    return abs(a - b) / max(1e-9, min(a, b))


def compare(a: dict, b: dict, tolerance: float = TOLERANCE) -> Comparison:
    """Compare the medians of two ``appliance bench`` JSON reports (stages both ran)."""
    ma, mb = _medians(a), _medians(b)
    ra, rb = _reference(a), _reference(b)
    rows = []
    for name in [n for n in ma if n in mb]:
        (x, nx), (y, ny) = ma[name], mb[name]
        diff = _difference(x, y)
        samples = min(nx, ny)
        why = ("per item" if name in PER_ITEM and f"{name} per item" in ma
               else "split" if samples < 0 else f"{samples} samples" if samples < MIN_SAMPLES else "")
        within = None if why else diff <= tolerance or abs(x - y) <= NOISE_FLOOR_MS
        adjusted = round(_difference(x / ra["p50_ms"], y / rb["p50_ms"]), 4) if ra and rb else None
        rows.append(Row(name, x, y, round(diff, 4), within, adjusted, samples, why))
    return Comparison(rows, tolerance, (ra["p50_ms"], rb["p50_ms"]) if ra and rb else None,
                      (ra["drift"], rb["drift"]) if ra and rb else None)


def markdown(c: Comparison, a_label: str = "A", b_label: str = "B") -> str:
    lines = [f"**{c.verdict}**: {c.summary()}.", "",
             f"| stage | p50 ms {a_label} | p50 ms {b_label} | difference | within | without the CPU's change |",
             "|---|---|---|---|---|---|"]
    for r in c.rows:
        # A share of a median under the noise floor (a part that did nothing in one run) means nothing: the
        # difference is then given in ms.
        small = min(r.a_ms, r.b_ms) < NOISE_FLOOR_MS
        difference = f"{r.b_ms - r.a_ms:+.3f} ms" if small else f"{100 * r.difference:.1f}%"
        adjusted = "" if r.adjusted is None or small else f"{100 * r.adjusted:.1f}%"
        lines.append(f"| {r.name} | {r.a_ms:.3f} | {r.b_ms:.3f} | {difference} | {r.judged} | {adjusted} |")
    if c.reference_ms:
        lines.append(f"| *CPU reference* | {c.reference_ms[0]:.3f} | {c.reference_ms[1]:.3f} | "
                     f"{100 * c.machine_difference:.1f}% | {'steady' if c.steady else '**changed**'} | |")
    return "\n".join(lines) + "\n"
