"""python -m bench NAME [FLAGS ...] | all

Each benchmark measures side by side in one process, prints what it does, and ends
with one line of JSON holding its figures and ratios.
"""

from __future__ import annotations

import importlib
import sys

from pipeline import cli

# name -> module whose main(argv) runs it.
BENCHMARKS = {
    "generate": "bench.generate",
    "formats": "bench.formats",
    "input": "bench.input",
    "feed": "bench.feed",
    "step": "bench.step",
    "accuracy": "bench.accuracy",
    "loop": "bench.loop",
    "resume": "bench.resume",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        print("benchmarks:", ", ".join(BENCHMARKS))
        return 0 if argv else 2
    names = list(BENCHMARKS) if argv[0] == "all" else [argv[0]]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"bench: error: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        importlib.import_module(BENCHMARKS[name]).main(argv[1:])
    return 0


if __name__ == "__main__":
    cli.leave(main(sys.argv[1:]))
