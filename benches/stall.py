"""Re-measures the stall of one background ``save_ckpt`` of 1 GB alone (the
last line of the README's per-op pipeline table) and, given the JSON of a
``data-juicer-accel bench --only pipeline`` run, stores it there with its
command and date. A maintainer's tool, not shipped: run from the
repository's root, then benches/readme.py to refresh the README::

    python benches/stall.py docs/bench-pipeline.json
"""

from __future__ import annotations

import datetime
import json
import sys
import tempfile

from data_juicer_accel.bench.pipeline import stall_at_size, stall_sentence

COMMAND = "python benches/stall.py"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"usage: {COMMAND} [RESULTS.json]", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dja-stall-") as workdir:
        big = stall_at_size(10**9, 5, workdir)
    big["command"] = COMMAND
    big["date"] = datetime.date.today().isoformat()
    print(stall_sentence(big))
    if argv:
        with open(argv[0]) as f:
            results = json.load(f)
        results[next(iter(results))]["stall_at_size"] = big
        with open(argv[0], "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
