"""Is `appliance bench` repeatable? Run it twice on the same input and compare the medians (`appliance compare`).

    python benchmarks/repeatability.py [--seconds 120] [--faces 4] [--attempts 3] [--keep-going]
                                       [--cpu-wakeup-latency-us 0] [--out NAME]

A pair only counts when the machine held still: both runs' CPU reference (a fixed matmul timed in the loop's
slack, see appliance.tools.bench.CpuReference) within 5 % of each other and neither drifting by more than 5 % inside its
run. This project's 2-core VM shares its host: for seconds to minutes at a time every stage runs 20-30 % slower
(the reference with it), so a pair taken across such a change measures the host, not the benchmark. Such pairs are
kept in the record, marked, and the next pair is run, up to ``--attempts`` (``--keep-going``: all of them, each
steady one judged). The reference sees the loop's own CPU only: with the kernel's idle states, face detection
(MediaPipe hands every frame to its own two-thread pool) can still run 20 % slower for a whole run while it holds.
``--cpu-wakeup-latency-us 0`` runs both with idle CPUs polling (loop.cpu_wakeup_latency_us), so no vCPU is parked
between ticks. ``--faces 4`` holds the expression batch constant (the demo's own face count changes along the
clip), as in the benchmark's 4-faces target.

Writes benchmarks/results/<out>.{json,md}: every pair, its verdict, and the table of the first steady pair.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.tools.compare import STEADY, TOLERANCE, compare, markdown  # noqa: E402


def bench(args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-m", "appliance", "bench", "--seconds", str(args.seconds), "--faces", str(args.faces),
           "--json", str(out)]
    if args.cpu_wakeup_latency_us is not None:
        cmd += ["--cpu-wakeup-latency-us", str(args.cpu_wakeup_latency_us)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--faces", type=int, default=4)
    parser.add_argument("--attempts", type=int, default=3, help="pairs to try until one ran on a steady machine")
    parser.add_argument("--keep-going", action="store_true", help="run all the pairs and judge every steady one")
    parser.add_argument("--cpu-wakeup-latency-us", type=int, default=None, help="passed to appliance bench")
    parser.add_argument("--out", default="repeatability", help="name of the result files in benchmarks/results")
    args = parser.parse_args()
    pairs = []
    judged = None
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(1, args.attempts + 1):
            runs = []
            for i in (1, 2):
                print(f"pair {attempt}, run {i}", file=sys.stderr, flush=True)
                runs.append(bench(args, Path(tmp) / f"pair{attempt}-run{i}.json"))
            c = compare(*runs)
            pairs.append(c)
            print(f"pair {attempt}: {c.verdict}, steady machine: {c.steady}; {c.summary()}", file=sys.stderr,
                  flush=True)
            if c.steady:
                judged = judged or c
                if not args.keep_going:
                    break
    steady = [p for p in pairs if p.steady]
    out = ROOT / "benchmarks" / "results"
    cmd = (f"python benchmarks/repeatability.py --seconds {args.seconds:g} --faces {args.faces} "
           f"--attempts {args.attempts}")
    if args.cpu_wakeup_latency_us is not None:
        cmd += f" --cpu-wakeup-latency-us {args.cpu_wakeup_latency_us}"
    if args.keep_going:
        cmd += " --keep-going"
    if args.out != "repeatability":
        cmd += f" --out {args.out}"
    (out / f"{args.out}.json").write_text(json.dumps({
        "command": cmd, "seconds": args.seconds, "faces": args.faces, "tolerance": TOLERANCE, "steady_within": STEADY,
        "judged_pair": pairs.index(judged) + 1 if judged else None,
        "within_target": judged.verdict == "same" if judged else None,
        "steady_pairs": len(steady), "steady_pairs_within": sum(p.verdict == "same" for p in steady),
        "pairs": [p.to_dict() for p in pairs]}, indent=2) + "\n")
    if judged and args.keep_going:
        head = (f"**{sum(p.verdict == 'same' for p in steady)} of {len(steady)} pairs on a steady machine within "
                f"{100 * TOLERANCE:g}%** ({len(pairs) - len(steady)} of {len(pairs)} pairs ran while the CPU's speed "
                f"changed). The first steady pair is shown.")
    elif judged:
        head = (f"Pair {pairs.index(judged) + 1} ran on a steady machine: **{judged.verdict}**: {judged.summary()}.")
    else:
        head = (f"**No pair in {args.attempts} ran on a steady machine** (CPU reference within {100 * STEADY:g}%); "
                f"nothing judged. The last pair is shown.")
    lines = ["# Repeatability of `appliance bench`", "", f"`{cmd}`: two runs on the bundled demo, one after the "
             f"other, compared with `appliance compare` (target: medians within {100 * TOLERANCE:g}%).", "", head, "",
             "| pair | CPU reference ms run 1 / run 2 | drift inside the runs | steady | verdict |",
             "|---|---|---|---|---|"]
    for n, p in enumerate(pairs, 1):
        ref = " / ".join(f"{r:.3f}" for r in p.reference_ms) if p.reference_ms else "-"
        drift = ", ".join(f"{100 * d:+.1f}%" for d in p.drift) if p.drift else "-"
        lines.append(f"| {n} | {ref} | {drift} | {'yes' if p.steady else 'no'} | {p.verdict} |")
    shown = judged or pairs[-1]
    lines += ["", f"## Pair {pairs.index(shown) + 1}", "", markdown(shown, "run 1", "run 2")]
    (out / f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
