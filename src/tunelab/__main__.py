"""`python -m tunelab ...`: the CLI, as launchers start it (`torchrun -m tunelab run ...`)."""

import sys

from tunelab.cli import main

sys.exit(main())
