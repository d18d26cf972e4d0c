"""Stand-in participants for the launcher's process tests, started as ``python -m fake_participant``.

The launcher starts participants by module name in fresh processes: put :data:`HELPERS_DIR` on their
``PYTHONPATH`` (:func:`pythonpath`) and set ``launcher.PARTICIPANT_MODULE`` to the helper's name.
Inside the test process import them as ``tests.helpers.fake_participant``.
"""
import os
from pathlib import Path

HELPERS_DIR = Path(__file__).resolve().parent
REPO_DIR = HELPERS_DIR.parents[1]
CONFIG_DIR = REPO_DIR / "fedml_config"


def pythonpath() -> str:
    """``PYTHONPATH`` for a participant process: the helpers first, then what this process was given."""
    return os.pathsep.join(p for p in (str(HELPERS_DIR), os.environ.get("PYTHONPATH", "")) if p)
