"""``python -m fedpft_algo.participant``: one FedML participant (see :mod:`fedpft_algo.participant`).

Kept at the top level because users start it by this name on every host of a cross-silo deployment.
"""
import sys

from .runtime.participant import main

if __name__ == "__main__":
    sys.exit(main())
