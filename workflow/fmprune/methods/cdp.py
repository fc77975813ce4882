"""CDP: Class-wise Discriminative Power, scored with TF-IDF.

Paper: Xu et al., "CDP: Towards Optimal Filter Pruning via Class-wise Discriminative Power",
ACM MM 2021. Tap: ``conv`` (raw convolution output, before BN); ReLU is applied here, as the
reference code does.

1. a[c, n] = spatial mean of ReLU(conv output) of channel c in image n (the method's per-image
   ``statistics``), gathered into documents by ``documents_of``.
2. tf[c, n] = beta * a[c, n] / sum_c' a[c', n], beta = 1 + ln(C / coe) if coe > 0 else 1.
3. channel c occurs in document n when a[c, n] >= mean_n a[c, :] (ties within rounding occur);
   S_c = those documents.
4. TF_c = mean of tf[c, n] over S_c; IDF_c = ln(N / (|S_c| + 1)); score_c = TF_c * IDF_c.

Where this follows the paper or the reference code:

- Documents: the reference uses every image as a document and never reads labels, although the
  paper is about classes. ``documents="image"`` (default) follows the reference;
  ``documents="class"`` (a[c, k] = mean of a[c, n] over the images of class k) follows the paper.
- beta: the reference leaves coe unset, so beta = 1 (default coe=0.0). With beta = 1 wide layers
  get smaller tf (each document's activations are spread over more channels), which biases a
  global selection against them; coe > 0 multiplies tf by 1 + ln(C / coe), which grows with C.
- Selection (``select_global``): the reference keeps the scores strictly above the k-th, i.e.
  k - 1 channels, and has no per-layer floor (a layer can be emptied). Here exactly k are kept and
  every group keeps at least ``min_channels``. The reference's FLOPs-target bisection was disabled
  there and is not part of this module.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from . import NativeForm, combine
from .params import number, one_of
from .streaming import checked_maps

READS = "conv"
PARAMS = {"coe": number(minimum=0.0), "documents": one_of("image", "class")}  # with their checks
# The plan key ``sparsity``: the global fraction of channels removed (``select_global``).
NATIVE_FORM = NativeForm("sparsity", low=0.0, high=0.999, higher_prunes_more=True)
PAPER_MACS = "macs"  # the CDP paper counts conv + linear MACs (METHODS.md, "Counting cost")

#: Activations within ``TIE_RTOL * max_n |a[c, n]|`` of their row mean count as equal to it.
TIE_RTOL = 1e-12


def statistics(x: torch.Tensor) -> torch.Tensor:
    """Spatial mean of ReLU(x) of every map of ``x`` [B, C, H, W] (step 1 per image); float64 [B, C]."""
    return torch.relu(x.to(torch.float64)).mean(dim=(2, 3))


def document_activations(
    batches: Iterable[torch.Tensor],
    *,
    labels=None,
    documents: str = "image",
) -> np.ndarray:
    """Document-activation matrix a, float64 [C, D], of the maps in ``batches``; see
    :func:`documents_of`."""
    return documents_of((statistics(x) for x in checked_maps(batches, dtype=None)), labels=labels, documents=documents)


def documents_of(
    activations: Iterable[torch.Tensor],
    *,
    labels=None,
    documents: str = "image",
) -> np.ndarray:
    """Document-activation matrix a, float64 [C, D], from per-image activations [B, C] (a batch
    at a time, the method's ``statistics``).

    ``documents="image"``: one column per image, in batch order (``labels`` is ignored).
    ``documents="class"``: ``labels`` holds one integer class per image in batch order; one column
    per class present, in ascending label order, holding the mean of a[c, n] over its images.
    """
    if documents not in ("image", "class"):
        raise ValueError(f"documents must be 'image' or 'class'; got {documents!r}")
    by_class = documents == "class"
    if by_class:
        if labels is None:
            raise ValueError("documents='class' needs labels, one per image in batch order")
        labels = np.asarray(labels).reshape(-1)
        classes, class_of = np.unique(labels, return_inverse=True)
        class_of = torch.from_numpy(class_of.astype(np.int64))
        sums = None
    columns = []
    n_images = 0
    for act in activations:
        act = torch.as_tensor(act).to(device="cpu", dtype=torch.float64)
        b = act.shape[0]
        if by_class:
            if n_images + b > labels.size:
                raise ValueError(f"more images than the {labels.size} labels given")
            if sums is None:
                sums = torch.zeros(classes.size, act.shape[1], dtype=torch.float64)
            sums.index_add_(0, class_of[n_images : n_images + b], act)
        else:
            columns.append(act.T)
        n_images += b
    if by_class:
        if n_images != labels.size:
            raise ValueError(f"{labels.size} labels for {n_images} images")
        counts = torch.bincount(class_of, minlength=classes.size).to(torch.float64)
        return (sums / counts[:, None]).T.contiguous().numpy()
    return torch.cat(columns, dim=1).numpy()


def tfidf_components(a, *, coe: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(TF_c, IDF_c), each float64 [C], of the activation matrix ``a`` [C, N] (steps 2-4).

    A document whose activations sum to 0 (every channel dead) contributes tf = 0 (it still counts
    in N). An activation within ``TIE_RTOL * max_n |a[c, n]|`` below the row mean counts as equal
    to it, i.e. occurs: float rounding of the mean must not drop exact ties (a constant row would
    otherwise lose every document and give TF = 0/0).
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"a must be [C, N] with N >= 1; got shape {a.shape}")
    c, n = a.shape
    beta = 1.0 + np.log(c / coe) if coe > 0 else 1.0
    doc_sum = a.sum(axis=0)
    tf = np.divide(beta * a, doc_sum, out=np.zeros_like(a), where=doc_sum != 0)
    threshold = a.mean(axis=1) - TIE_RTOL * np.abs(a).max(axis=1)
    occurs = a >= threshold[:, None]
    n_occ = occurs.sum(axis=1)
    tf_c = np.where(occurs, tf, 0.0).sum(axis=1) / n_occ
    idf_c = np.log(n / (n_occ + 1.0))
    return tf_c, idf_c


def tfidf_scores(a, *, coe: float = 0.0) -> np.ndarray:
    """score_c = TF_c * IDF_c, float64 [C]; see ``tfidf_components``."""
    tf_c, idf_c = tfidf_components(a, coe=coe)
    return tf_c * idf_c


def score(group, *, coe: float = 0.0, documents: str = "image") -> np.ndarray:
    labels = group.labels if documents == "class" else None
    return combine([tfidf_scores(documents_of(group.statistics(tap), labels=labels, documents=documents), coe=coe)
                    for tap in group.taps])


def select_global(
    scores_per_group: dict[str, np.ndarray],
    sparsity: float,
    *,
    min_channels: int = 1,
) -> dict[str, np.ndarray]:
    """Kept channel indices (sorted int64) per group, chosen globally.

    All groups' scores are concatenated (groups in dict order, channels ascending) and exactly
    k = int(total * (1 - sparsity)) top scores are kept; ties go to the earlier position. Then
    every group left with fewer than ``min_channels`` (capped at its size) gets its own best
    channels added back, so the result can hold slightly more than k channels.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity!r}")
    names = list(scores_per_group)
    scores = [np.asarray(scores_per_group[g], dtype=np.float64).reshape(-1) for g in names]
    sizes = [s.size for s in scores]
    flat = np.concatenate(scores) if scores else np.zeros(0)
    k = int(flat.size * (1.0 - sparsity))
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    result = {}
    start = 0
    for name, s, size in zip(names, scores, sizes):
        kept = keep[start : start + size].copy()
        start += size
        missing = min(min_channels, size) - int(kept.sum())
        if missing > 0:
            best = [i for i in np.argsort(-s, kind="stable") if not kept[i]]
            kept[best[:missing]] = True
        result[name] = np.flatnonzero(kept).astype(np.int64)
    return result


def native_kept(scores: dict[str, np.ndarray], extra: dict, sparsity: float, min_channels: int = 1):
    """The plan form ``sparsity``: :func:`select_global` of all groups' scores."""
    return select_global(scores, sparsity, min_channels=min_channels)
