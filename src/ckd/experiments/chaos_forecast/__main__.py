"""``python -m ckd.experiments.chaos_forecast generate|run`` (``main``)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
