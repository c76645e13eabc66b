import sys

from vicinal.experiments.cli import main

sys.exit(main())
