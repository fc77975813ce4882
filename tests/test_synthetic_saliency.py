"""The embedded saliency set: reproducible pairs, exact masks, varied objects that stand out."""
import numpy as np
import pytest

from fmprune import synthetic_saliency
from fmprune.synthetic_saliency import generate, generate_cached, pair


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


def test_the_cache_serves_the_generated_pairs_and_regenerates_a_damaged_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FMPRUNE_CACHE", str(tmp_path))
    images, masks = generate_cached(6, size=32, seed=1)
    fresh = generate(6, size=32, seed=1)
    assert np.array_equal(images, fresh[0]) and np.array_equal(masks, fresh[1])
    [stored] = (tmp_path / "synthetic-saliency").iterdir()
    assert stored.name.startswith("6-32-1-")  # count, size, seed, then the generator's source hash

    def no_generation(*args):
        raise AssertionError("generated again")

    with monkeypatch.context() as m:
        m.setattr(synthetic_saliency, "generate", no_generation)
        again = generate_cached(6, size=32, seed=1)
    assert np.array_equal(again[0], images)
    stored.write_bytes(stored.read_bytes()[:100])  # a damaged file is generated afresh and replaced
    assert np.array_equal(generate_cached(6, size=32, seed=1)[1], masks)
    with pytest.raises(AssertionError, match="generated again"):
        monkeypatch.setattr(synthetic_saliency, "generate", no_generation)
        generate_cached(7, size=32, seed=1)  # another count is another file
