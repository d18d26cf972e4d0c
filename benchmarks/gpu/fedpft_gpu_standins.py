"""Stand-ins for the modules FedML 0.9.6 imports at ``import fedml`` but that a FedPFT run never calls,
for the GPU check's venv only (``run.sh`` installs this file with a ``.pth`` line into that venv).

At most 64 MiB travel to the GPU machine per call, and the real modules would need 62 MiB of wheels:
``scipy`` (FedML's differential-privacy accountant, Shapley values, security defences), ``boto3`` and
``botocore`` (its S3 transport), ``h5py`` (its own dataset loaders) and ``PIL`` (torchvision's datasets and transforms).
The finder below sits *last* on ``sys.meta_path``: a module the machine has is always the real one; only a
missing one of these names imports as a stand-in, whose every attribute is an empty class: import-time code
(subclassing, ``issubclass``) passes, no real object is an instance of one, and calling one raises
``ModuleNotFoundError`` naming it, so a code path that does need the module fails loudly rather than
running on a fake. ``python -m fedpft_gpu_standins`` prints the names that are stand-ins on this machine.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

NAMES = ("scipy", "boto3", "botocore", "h5py", "PIL")
_DISTRIBUTIONS = {"PIL": "pillow"}   # what to pip install where a name differs


def _missing(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"{name} is a stand-in in the GPU check's venv (FedML imports it, FedPFT does not use it); "
        f"pip install {_DISTRIBUTIONS.get(name.split('.')[0], name.split('.')[0])} to use it", name=name)


class _StandInType(type):
    """The type of a stand-in's attributes. Each attribute is a class, so that import-time code that subclasses
    it or passes it to ``issubclass`` (torchvision registers kernels for ``PIL.Image.Image``) still imports;
    any further attribute is another such class; calling one (or a subclass of one) raises."""

    def __getattr__(cls, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _stand_in(f"{cls._stand_in_name}.{attr}")

    def __call__(cls, *args, **kwargs):
        raise _missing(cls._stand_in_name)   # a subclass inherits its stand-in base's name


def _stand_in(name: str) -> type:
    module, _, attr = name.rpartition(".")
    return _StandInType(attr, (), {"__module__": module, "_stand_in_name": name})


class _StandInModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _stand_in(f"{self.__name__}.{attr}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in NAMES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        module.__fedpft_standin__ = True
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())


def standins() -> list[str]:
    """The names of NAMES that import as stand-ins here (the machine lacks the real module)."""
    import importlib

    return [name for name in NAMES if getattr(importlib.import_module(name), "__fedpft_standin__", False)]


install()

if __name__ == "__main__":
    print(" ".join(standins()) or "none")
