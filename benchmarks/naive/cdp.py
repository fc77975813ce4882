"""Naive CDP: activations, TF-IDF and global selection with plain Python loops.

Reference for tests and benchmarks of ``fmprune.methods.cdp`` (same interface, float64).
"""
import math

import numpy as np


def document_activations(batches, *, labels=None, documents="image"):
    """a[c, n] = spatial mean of ReLU(F); per class: mean over the class's images. [C, D]."""
    per_image = []
    for batch in batches:
        for img in np.asarray(batch, dtype=np.float64):
            per_image.append([float(np.mean(np.maximum(f, 0.0))) for f in img])
    a = np.array(per_image).T
    if documents == "image":
        return a
    columns = []
    for k in sorted(set(int(v) for v in labels)):
        members = [n for n, v in enumerate(labels) if int(v) == k]
        columns.append([sum(a[c, n] for n in members) / len(members) for c in range(a.shape[0])])
    return np.array(columns).T


def tfidf_scores(a, *, coe=0.0):
    """score_c = TF_c * IDF_c, computed channel by channel and document by document."""
    a = np.asarray(a, dtype=np.float64)
    c_count, n_docs = a.shape
    beta = 1.0 + math.log(c_count / coe) if coe > 0 else 1.0
    doc_sums = [sum(a[c, n] for c in range(c_count)) for n in range(n_docs)]
    scores = np.zeros(c_count)
    for c in range(c_count):
        mean = sum(a[c, n] for n in range(n_docs)) / n_docs
        # Ties within 1e-12 * max|a[c]| of the mean occur (fmprune.methods.cdp.TIE_RTOL).
        tol = 1e-12 * max(abs(a[c, n]) for n in range(n_docs))
        docs = [n for n in range(n_docs) if a[c, n] >= mean - tol]
        tfs = [beta * a[c, n] / doc_sums[n] if doc_sums[n] != 0 else 0.0 for n in docs]
        scores[c] = (sum(tfs) / len(docs)) * math.log(n_docs / (len(docs) + 1))
    return scores


def select_global(scores_per_group, sparsity, *, min_channels=1):
    """Top k = int(total * (1 - sparsity)) of all scores (ties: earlier first), then the floor."""
    entries = []
    for name, scores in scores_per_group.items():
        for i, s in enumerate(scores):
            entries.append((float(s), len(entries), name, i))
    k = int(len(entries) * (1.0 - sparsity))
    ranked = sorted(entries, key=lambda e: (-e[0], e[1]))
    kept = {name: set() for name in scores_per_group}
    for _, _, name, i in ranked[:k]:
        kept[name].add(i)
    for name, scores in scores_per_group.items():
        own = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
        for i in own:
            if len(kept[name]) >= min(min_channels, len(scores)):
                break
            kept[name].add(i)
    return {name: np.array(sorted(kept[name]), dtype=np.int64) for name in scores_per_group}
