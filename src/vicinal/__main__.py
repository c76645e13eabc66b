"""``python -m vicinal``: the command line (see :mod:`vicinal.experiments.cli`)."""

import sys

from vicinal.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
