"""`python -m local_runs ...`: the command line (see local_runs.cli)."""
import sys

from local_runs.cli import main

sys.exit(main())
