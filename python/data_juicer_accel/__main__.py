import sys

from data_juicer_accel.cli import main

sys.exit(main())
