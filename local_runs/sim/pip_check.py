"""``pip`` as a sim processing job sees it: requirements are checked against this environment, never installed.

The FrameworkProcessor's ``runproc.sh`` runs ``pip uninstall --yes typing`` and
``python -m pip install -r requirements.txt`` inside the container. In sim the job runs in the host
environment (see ``processing.py``): ``install -r FILE`` checks FILE (``requirements.py``) and fails
naming what is missing; ``uninstall`` does nothing; anything else is refused.
"""
from __future__ import annotations

import sys

from local_runs.sim.requirements import RequirementsNotSatisfied, ensure_satisfied


def main(argv: list[str]) -> int:
    if argv[:1] == ["uninstall"]:
        print(f"sim: not running `pip {' '.join(argv)}` (the job runs in the host environment)", flush=True)
        return 0
    if argv[:1] == ["install"]:
        files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-r", "--requirement")]
        if files and len(argv) == 1 + 2 * len(files):
            try:
                for path in files:
                    print(f"sim: checking {path} against the host environment (no pip install)", flush=True)
                    ensure_satisfied(path)
            except RequirementsNotSatisfied as exc:
                print(f"RuntimeError: {exc}", file=sys.stderr, flush=True)
                return 1
            return 0
    print(f"RuntimeError: sim does not run `pip {' '.join(argv)}`: a processing job runs in the host "
          "environment; install what it needs there, or use the docker backend", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
