"""The full side-by-side benchmark behind docs/benchmarks.md: one run, the same data, every reader.

    python scripts/bench.py --profile large|small|all [--quick] [--out docs/benchmarks.md]
                            [--workdir DIR] [--small-samples N] [--seconds S] [--no-cold]

A thin caller of `shardfeed.bench.report.main` (see `--help` and src/shardfeed/bench/): the
package runs the profiles and writes the report; this script names the checkout, whose
docs/benchmarks.md is the default report, and prints the progress and tables.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from shardfeed.bench.report import main

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], repo=REPO, say=functools.partial(print, flush=True)))
