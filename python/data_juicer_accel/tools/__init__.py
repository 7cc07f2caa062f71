"""Subcommands of the ``data-juicer-accel`` command line (see ``cli.py``)."""
