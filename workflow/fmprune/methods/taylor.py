"""First-order Taylor criterion (Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional
Neural Networks for Resource Efficient Inference", ICLR 2017). Reads ``act_grad``.

Per image n and channel c: θ[n, c] = |mean over positions of z · ∂L/∂z|, z the ``act`` tap
(after BN and ReLU) and L the task's loss on the sample's labels; score = mean over images,
divided by the layer's L2 norm of those scores (the paper's per-layer normalisation). For a
coupled group each tap is normalised so, then the taps are combined like every score-based
method's (:func:`fmprune.methods.combine`).

Extraction stores mean(z · ∂L/∂z) per image and channel (signed, float64 [N, C]), with one
extra backward pass, only when a method reading ``act_grad`` is configured. The loss is summed
over a batch's images, so each image's term is the gradient of its own loss (the model is in
eval mode: images do not interact); the paper's minibatch mean only scales every term by the
same 1/B, which the normalisation removes.

Follows the paper: the absolute value is taken per image, then averaged. The widely used
public re-implementation (jacobgil/pytorch-pruning) sums z · ∂L/∂z over the batch before taking
the absolute value, so opposite-signed images cancel there; that is not followed. The paper
prunes one filter at a time with fine-tuning in between; here one ranking from the trained
model is used, like every criterion of the pipeline.
"""
from __future__ import annotations

import numpy as np

from . import combine

READS = "act_grad"
PARAMS: dict = {}  # keyword arguments of score, with their checks (see .params)


def channel_scores(terms: np.ndarray) -> np.ndarray:
    """Scores of one tap from its terms [N, C] (mean over positions of z · ∂L/∂z per image):
    mean over images of |term|, divided by the L2 norm over channels (unless that is 0)."""
    terms = np.asarray(terms, dtype=np.float64)
    if terms.ndim != 2 or terms.shape[0] == 0:
        raise ValueError(f"expected Taylor terms [N, C] with N >= 1, got shape {terms.shape}")
    scores = np.abs(terms).mean(axis=0)
    norm = float(np.sqrt(np.sum(scores**2)))
    return scores / norm if norm > 0 else scores


def score(group) -> np.ndarray:
    return combine([channel_scores(group.taylor_terms(tap)) for tap in group.taps])
