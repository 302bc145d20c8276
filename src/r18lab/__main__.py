"""`python -m r18lab ...` (and `torchrun --nproc_per_node=N -m r18lab train ...`): the command line."""
import sys

from .cli import main

sys.exit(main())
