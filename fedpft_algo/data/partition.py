"""Split a task's training examples across federated clients.

* ``"homo"``: IID — a seeded shuffle cut into ``client_num`` near-equal parts.
* ``"hetero"``: label-skewed — for every class, client shares are drawn from Dirichlet(``alpha``)
  (Hsu et al. 2019), with FedML's own per-class step
  (``fedml.core.data.noniid_partition.partition_class_samples_with_dirichlet_distribution``),
  redrawn until every client holds ``min_per_client`` examples, as FedML's
  ``non_iid_partition_with_dirichlet_distribution`` does for its fixed minimum of 10. With
  ``min_per_client=10`` the result equals FedML's function under ``np.random.seed(seed)``.
  Smaller ``alpha`` means more skew (0.1: most clients hold one or two classes; 100: near IID).

FedML draws from NumPy's global generator; :func:`partition` seeds it and restores its state,
so a call is reproducible and leaves the caller's random stream untouched.
"""
from __future__ import annotations

import importlib
import logging
from typing import Dict, List, Sequence

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

METHODS = ("hetero", "homo")
MAX_DRAWS = 1000  # redraws allowed before giving up on the minimum per client


def _fedml_partitioner():
    """FedML's partition module, imported on first use (``import fedml`` takes seconds)."""
    from .. import compat

    compat.ensure_torchvision_ops()  # fedml imports torchvision; see compat
    return importlib.import_module("fedml.core.data.noniid_partition")


def _check(labels: np.ndarray, client_num: int, method: str, alpha: float, min_per_client: int) -> None:
    if method not in METHODS:
        raise DataError(f"partition method {method!r} is not one of {', '.join(METHODS)}")
    if isinstance(client_num, bool) or not isinstance(client_num, (int, np.integer)) or client_num < 1:
        raise DataError(f"client_num must be a positive integer, got {client_num!r}")
    if method == "hetero" and not alpha > 0:
        raise DataError(f"Dirichlet alpha must be > 0, got {alpha!r}")
    if isinstance(min_per_client, bool) or not isinstance(min_per_client, (int, np.integer)) or min_per_client < 0:
        raise DataError(f"min_per_client must be a non-negative integer, got {min_per_client!r}")
    if labels.ndim != 1 or len(labels) == 0 or labels.min() < 0:
        raise DataError(f"labels must be a non-empty 1-D array of ids >= 0, got shape {labels.shape}")
    if client_num > len(labels):
        raise DataError(f"{client_num} clients but only {len(labels)} training examples: use fewer clients")
    if client_num * min_per_client > len(labels):
        raise DataError(f"{client_num} clients x min_per_client {min_per_client} > {len(labels)} training examples: "
                        "lower min_per_client or use fewer clients")


def partition(labels: np.ndarray, client_num: int, method: str = "hetero", alpha: float = 0.5, seed: int = 0,
              min_per_client: int = 10) -> Dict[int, np.ndarray]:
    """Client index -> sorted-by-draw int64 array of example indices; the parts cover every example once."""
    labels = np.asarray(labels, dtype=np.int64)
    _check(labels, client_num, method, alpha, min_per_client)
    if method == "homo":
        order = np.random.default_rng(seed).permutation(len(labels))
        return {i: part.astype(np.int64) for i, part in enumerate(np.array_split(order, client_num))}

    fedml_partition = _fedml_partitioner()
    n, state = len(labels), np.random.get_state()
    np.random.seed(seed)
    try:
        for _ in range(MAX_DRAWS):  # FedML's loop, with our minimum and a bound
            idx_batch: List[list] = [[] for _ in range(client_num)]
            for k in range(int(labels.max()) + 1):
                idx_k = np.where(labels == k)[0]
                idx_batch, min_size = fedml_partition.partition_class_samples_with_dirichlet_distribution(
                    n, alpha, client_num, idx_batch, idx_k)
            if min_size >= min_per_client:
                break
        else:
            raise DataError(f"no Dirichlet(alpha={alpha}) draw in {MAX_DRAWS} gave every one of {client_num} clients "
                            f">= {min_per_client} examples: raise alpha, lower min_per_client or use fewer clients")
        parts = {}
        for i in range(client_num):
            np.random.shuffle(idx_batch[i])
            parts[i] = np.asarray(idx_batch[i], dtype=np.int64)
    finally:
        np.random.set_state(state)
    return parts


def partition_records(labels: np.ndarray, parts: Dict[int, np.ndarray],
                      label_names: Sequence[str]) -> List[dict]:
    """One JSON-able row per client: size, per-label counts, max label share, label entropy (bits)."""
    labels = np.asarray(labels)
    rows = []
    for client in sorted(parts):
        counts = np.bincount(labels[parts[client]], minlength=len(label_names))
        share = counts / max(counts.sum(), 1)
        nonzero = share[share > 0]
        rows.append({"client": int(client), "size": int(counts.sum()),
                     "label_counts": {str(name): int(c) for name, c in zip(label_names, counts)},
                     "max_label_share": round(float(share.max()), 4),
                     "label_entropy_bits": round(float(-(nonzero * np.log2(nonzero)).sum()), 4)})
    return rows


def partition_table(labels: np.ndarray, parts: Dict[int, np.ndarray], label_names: Sequence[str]) -> str:
    """A printable table: one row per client (size, count per label), then a total row."""
    rows = partition_records(labels, parts, label_names)
    heads = [str(n)[:12] for n in label_names]
    widths = [max(len(h), 5) for h in heads]
    lines = ["client   size  " + "  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    for row in rows:
        counts = list(row["label_counts"].values())
        lines.append(f"{row['client']:>6} {row['size']:>6}  " + "  ".join(str(c).rjust(w) for c, w in zip(counts,
                                                                                                       widths)))
    totals = [sum(r["label_counts"][str(n)] for r in rows) for n in label_names]
    lines.append(f"{'total':>6} {sum(totals):>6}  " + "  ".join(str(c).rjust(w) for c, w in zip(totals, widths)))
    return "\n".join(lines)


def skew(records: List[dict]) -> Dict[str, float]:
    """Mean max-label share and mean label entropy (bits) over clients: higher share / lower entropy = more skew."""
    return {"mean_max_label_share": float(np.mean([r["max_label_share"] for r in records])),
            "mean_label_entropy_bits": float(np.mean([r["label_entropy_bits"] for r in records]))}
