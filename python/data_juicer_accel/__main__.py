"""``python -m data_juicer_accel bench``."""

import sys

from data_juicer_accel.cli import main

# The guard matters: py-data-juicer's save_to_disk(num_proc > 1) starts a
# spawn pool, whose workers import __main__.
if __name__ == "__main__":
    sys.exit(main())
