"""Rate-list grammar, layout mapping and ranking."""
import logging

import numpy as np
import pytest

from fmprune import FmpruneError
from fmprune.models import build
from fmprune.plan import group_rates, keep_count, kept_from_scores, rank, uniform_rates
from fmprune.ratelist import parse_rates


def test_parse_the_seeds_syntax():
    assert parse_rates("[0.]+[0.18]*29") == [0.0] + [0.18] * 29
    assert parse_rates(" [ .5 , 1e-1 ] * 2 + [0] ") == [0.5, 0.1, 0.5, 0.1, 0.0]


@pytest.mark.parametrize("bad", ["", "[0.1", "[0.1]*", "[0.1]*2.5", "[0.1]+", "__import__('os')", "[1.0]", "[0.1]]",
                                 "[0.1,]", "[-0.1]"])
def test_malformed_rate_lists_are_one_line_errors(bad):
    with pytest.raises(FmpruneError) as err:
        parse_rates(bad)
    assert "\n" not in str(err.value) and "rate list" in str(err.value)


def test_keep_count_follows_the_seeds_float_arithmetic():
    assert keep_count(320, 0.8) == 63  # 320 * (1 - 0.8) = 63.99999…
    assert keep_count(16, 0.18) == 13
    assert keep_count(4, 0.99) == 1


def test_resnet_layout():
    spec = build("resnet56").channel_spec()
    rates = group_rates(spec, "[0.]+[0.18]*29")
    assert rates["stage1"] == rates["stage2"] == 0.18 and "stage3" not in rates
    assert len(rates) == 2 + 27


def test_wrong_length_names_the_layout():
    spec = build("resnet56").channel_spec()
    with pytest.raises(FmpruneError, match="resnet56 expects 30 entries: stem, stage1 stream"):
        group_rates(spec, "[0.1]*29")


def test_trailing_entries_are_ignored_with_a_warning(caplog):
    spec = build("resnet110").channel_spec()
    with caplog.at_level(logging.WARNING):
        rates = group_rates(spec, "[0.]+[0.2]*2+[0.3]*18+[0.40]*18+[0.39]*19")  # the DCT seed's 58 entries
    assert "ignoring the trailing [0.39]" in caplog.text
    assert rates["layer3.17.conv1"] == 0.39


def test_stem_entry_conflict_warns(caplog):
    spec = build("resnet20").channel_spec()
    with caplog.at_level(logging.WARNING):
        rates = group_rates(spec, "[0.5]+[0.2]*11")
    assert rates["stage1"] == 0.2 and "stem" in caplog.text


def test_ranking_is_stable_and_descending():
    assert rank([1.0, 3.0, 3.0, 2.0]).tolist() == [1, 2, 3, 0]
    spec = build("resnet20").channel_spec()
    scores = {g: np.arange(s.channels, dtype=float) for g, s in spec.groups.items()}
    kept = kept_from_scores(spec, scores, uniform_rates(spec, 0.5))
    assert kept["stage1"] == list(range(8, 16))
