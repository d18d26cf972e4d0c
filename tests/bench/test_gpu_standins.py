"""``benchmarks/gpu/fedpft_gpu_standins.py``: what a stand-in module lets import-time code do, and that any use
of one fails with the module's name. The finder is tried here directly (it only ever answers for its names)."""
import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "fedpft_gpu_standins.py"


@pytest.fixture
def standins(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))   # its install() appends a finder: undone after
    spec = importlib.util.spec_from_file_location("fedpft_gpu_standins", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stand_in_module(standins, name):
    finder = next(f for f in sys.meta_path if isinstance(f, standins._Finder))
    return importlib.util.module_from_spec(finder.find_spec(name))


def test_the_finder_comes_last_and_answers_only_for_its_names(standins):
    assert isinstance(sys.meta_path[-1], standins._Finder)
    assert sys.meta_path[-1].find_spec("numpy") is None and sys.meta_path[-1].find_spec("pandas.io") is None
    assert sys.meta_path[-1].find_spec("scipy.special") is not None


def test_import_time_uses_pass_and_every_real_use_names_the_module(standins):
    pil_image = _stand_in_module(standins, "PIL.Image")
    image_class = pil_image.Image
    assert isinstance(image_class, type) and not issubclass(image_class, int) and not isinstance(3, image_class)

    class Picture(image_class):   # a subclass at import time, as torchvision's kernels registry does
        pass

    with pytest.raises(ModuleNotFoundError, match=r"PIL\.Image\.Image is a stand-in .* pip install pillow"):
        Picture()
    special = _stand_in_module(standins, "scipy.special")
    with pytest.raises(ModuleNotFoundError, match=r"scipy\.special\.comb is a stand-in .* pip install scipy"):
        special.comb(4, 2)
    with pytest.raises(AttributeError):
        special.__wrapped__   # dunder look-ups stay honest (inspect, pickle, copy probe these)
