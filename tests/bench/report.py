"""Print the goal rows the benches wrote (``--json``) as one table: each goal, its figure, its baseline from the
same run, the ratio. ``make bench`` runs it last."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_publishing import print_table


def main() -> None:
    rows = [row for path in sys.argv[1:] if Path(path).exists() for row in json.loads(Path(path).read_text())]
    print_table("make bench: every goal beside its figure and its baseline (same run; 2 shared cores: noisy)", rows)


if __name__ == "__main__":
    main()
