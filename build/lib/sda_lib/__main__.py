"""`python -m sda_lib SUBCOMMAND ...`: the `sda` command (sda_lib.workbench.cli)."""

import sys

from .workbench.cli import main

sys.exit(main())
