#!/usr/bin/env bash
# Reruns `data-juicer-accel bench` and refreshes what the repository shows of
# it: docs/bench.json (the results), docs/bench.txt (the printed output),
# docs/bench.png (the plot) and the figures in README.md (its headline and
# benchmark summary, regions marked bench-headline / bench-summary).
#
#   bash docs/regenerate-bench.sh                 # the full run: 1 GB, 3 rounds
#   bash docs/regenerate-bench.sh --size 64MB --rounds 1
#
# Arguments go to the bench. Needs the bench extra and, for the Data-Juicer
# rows, py-data-juicer 1.6.1 (pip install --no-deps py-data-juicer==1.6.1 and
# the test extra). Run it on a quiet machine: the first lines of bench.txt say
# how much CPU other processes took during the run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
data-juicer-accel bench --json docs/bench.json "$@"
data-juicer-accel bench --report docs/bench.json --plot docs/bench.png | grep -v '^plot written to' > docs/bench.txt
# The per-op checkpoint pipeline and the Ray tables are refreshed apart
# (about 10 and 30 minutes):
#   data-juicer-accel bench --only pipeline --json docs/bench-pipeline.json
#   data-juicer-accel bench --only ray --size 256MB --rounds 5 --json docs/bench-ray.json
# and the pipeline table's 1 GB background-save stall alone (a minute):
#   python benches/stall.py docs/bench-pipeline.json
python benches/readme.py docs/bench.json README.md docs/bench-pipeline.json docs/bench-ray.json
echo "updated docs/bench.json, docs/bench.txt, docs/bench.png and README.md" >&2
