"""``python -m mtlkernels``: the study command line (see :mod:`mtlkernels.cli`)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
