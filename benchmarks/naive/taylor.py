"""Naive first-order Taylor: one image at a time, the taps' gradients from ``retain_grad`` on a
loss of that image alone, then the score with plain loops.

Reference for tests and benchmarks of ``fmprune.methods.taylor`` and of the Taylor terms that
``fmprune.features.extract`` stores (float64).
"""
import math

import numpy as np


def terms(model, images, labels, loss, taps):
    """Tap -> [N, C]: per image, the mean over positions of z · ∂L/∂z at that module (L = the
    loss of that image alone)."""
    modules = dict(model.named_modules())
    model.eval()
    rows = {tap: [] for tap in taps}
    for x, y in zip(images, labels):
        seen = {}
        handles = [modules[tap].register_forward_hook(lambda _m, _i, out, tap=tap: seen.setdefault(tap, out))
                   for tap in taps]
        try:
            out = model(x[None])
            for z in seen.values():
                z.retain_grad()
            loss(out, y[None], reduction="sum").backward()
        finally:
            for handle in handles:
                handle.remove()
        for tap in taps:
            z, g = seen[tap][0].detach().double(), seen[tap].grad[0].double()
            rows[tap].append([float((z[c] * g[c]).mean()) for c in range(z.shape[0])])
        model.zero_grad()
    return {tap: np.array(r) for tap, r in rows.items()}


def channel_scores(per_image):
    """Mean over images of |term|, divided by the L2 norm of those means over channels."""
    per_image = np.asarray(per_image, dtype=np.float64)
    n, c = per_image.shape
    means = [sum(abs(per_image[i, k]) for i in range(n)) / n for k in range(c)]
    norm = math.sqrt(sum(m * m for m in means))
    return np.array([m / norm if norm > 0 else m for m in means])
