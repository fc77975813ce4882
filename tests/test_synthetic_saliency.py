"""The embedded saliency set: reproducible pairs, exact masks, varied objects that stand out."""
import numpy as np

from fmprune.synthetic_saliency import generate, pair


def test_pairs_are_reproducible_and_independent_of_the_count():
    images, masks = generate(5, size=48, seed=3)
    assert images.shape == (5, 3, 48, 48) and masks.shape == (5, 48, 48)
    assert images.dtype == masks.dtype == np.uint8
    again_image, again_mask = pair(4, size=48, seed=3)
    assert np.array_equal(images[4], again_image) and np.array_equal(masks[4], again_mask)
    other, _ = pair(4, size=48, seed=4)
    assert not np.array_equal(other, images[4])


def test_masks_are_exact_and_objects_vary_and_stand_out():
    images, masks = generate(120, size=64, seed=0)
    assert set(np.unique(masks)) <= {0, 255}
    area = (masks > 0).mean(axis=(1, 2))
    assert area.min() > 0 and area.max() < 0.9  # every image has an object and a background
    assert np.quantile(area, 0.1) < 0.06 and np.quantile(area, 0.9) > 0.3  # small and large objects
    contrast = [np.abs(im[:, m].mean(1) - im[:, ~m].mean(1)).mean() / 255 for im, m in zip(images, masks > 0)]
    assert np.quantile(contrast, 0.1) > 0.1 and np.quantile(contrast, 0.9) > 0.4  # low- and high-contrast objects
    # textured: neither backgrounds nor objects are flat
    assert np.median([im[:, m].std(axis=1).mean() for im, m in zip(images, masks > 0)]) > 5
    assert np.median([im[:, ~m].std(axis=1).mean() for im, m in zip(images, masks > 0)]) > 5
