"""Ranking evaluation and result reports, checked against hand computation on a hand-made dataset."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from sda_lib.data import PreparedDataset, PrepareParams
from sda_lib.data.catalogue import Catalogue
from sda_lib.data.prepare import prepare_catalogue
from sda_lib.recsys import InteractionData, Recommender, evaluate, metrics_from_ranks, rank_targets, summarize
from sda_lib.recsys.base import Tables
from sda_lib.recsys.evaluate import draw_negatives
from sda_lib.recsys.report import gains_by_popularity, paired_ttest, table1
from sda_lib.recsys.sampling import sample_distinct_outside, sequence_keys

# Item ids "a".."f" become items 0..5 in first-seen order of the items table.
SEQUENCES = {"u0": "abcd", "u1": "eaf", "u2": "bcefa"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hand")
    items = pd.DataFrame({"item_id": list("abcdef"), "title": list("ABCDEF"), "image_path": [None] * 6})
    inter = pd.DataFrame(
        [(u, i, t) for u, seq in SEQUENCES.items() for t, i in enumerate(seq)],
        columns=["user_id", "item_id", "timestamp"],
    )
    prepare_catalogue(
        Catalogue("hand", items, inter, ["title"]),
        folder,
        PrepareParams(n_negatives=1, tail_threshold=2, tail_count_on="train"),
    )
    return InteractionData.from_prepared(PreparedDataset.load(folder))


class FixedScores(Recommender):
    """Scores given as a [users, items] matrix: user vectors are its rows, item vectors one-hot."""

    name = "fixed"

    def __init__(self, data, scores):
        super().__init__(data)
        self.scores = torch.nn.Parameter(torch.as_tensor(scores, dtype=torch.float32))

    def tables(self):
        return Tables(items=torch.eye(self.data.n_items), users=self.scores)

    def user_vectors(self, users, context, tables):
        return tables.users[users]


def test_dataset_layout(data):
    assert data.targets("test").tolist() == [3, 5, 0]
    assert data.targets("valid").tolist() == [2, 0, 5]
    items, offsets = data.history("test")
    assert [items[offsets[u] : offsets[u + 1]].tolist() for u in range(3)] == [[0, 1, 2], [4, 0], [1, 2, 4, 5]]
    # training counts a1 b2 c1 (u0's c is its validation item) d0 e2 f0; tail means fewer than 2
    assert data.popularity.tolist() == [1, 2, 1, 0, 2, 0]
    assert data.is_tail.tolist() == [True, False, True, True, False, True]
    # windows: last 3 items before the test target, shifted by one, left-padded
    assert data.context("test", 3).tolist() == [[1, 2, 3], [0, 5, 1], [3, 5, 6]]


def test_metrics_from_ranks_match_hand_computation():
    m = metrics_from_ranks(np.array([0, 1, 4, 5, 9, 10, 19, 20]))
    assert m["HR@5"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert m["HR@10"].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert m["HR@20"].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    np.testing.assert_allclose(
        m["NDCG@10"], [1, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(7), 1 / math.log2(11), 0, 0, 0]
    )
    np.testing.assert_allclose(m["NDCG@5"][:3], [1, 1 / math.log2(3), 1 / math.log2(6)])
    np.testing.assert_allclose(m["MRR"], 1 / np.array([1, 2, 5, 6, 10, 11, 20, 21]))


def test_full_ranking_excludes_history_but_not_target(data):
    scores = np.array(
        [
            # u0: history a b c, target d (0.5); e 0.9 and f 0.5 (tie) count, a b c do not
            [9.0, 9.0, 9.0, 0.5, 0.9, 0.5],
            # u1: history e a, target f (0.1); b c d all higher
            [9.0, 0.2, 0.3, 0.4, 9.0, 0.1],
            # u2: history b c e f, target a (0.7); d lower: rank 0
            [0.7, 5.0, 5.0, 0.1, 5.0, 5.0],
        ]
    )
    ranks = rank_targets(FixedScores(data, scores), data, "test", "full")
    assert ranks.tolist() == [2, 3, 0]
    # validation: u0's history is a b only; its target c (9.0) ties them, but they are excluded
    assert rank_targets(FixedScores(data, scores), data, "valid", "full").tolist()[0] == 0


def test_ties_count_against_the_target(data):
    constant = FixedScores(data, np.ones((3, 6)))
    full = rank_targets(constant, data, "test", "full")
    # every non-history item ties the target: ranked last among them
    assert full.tolist() == [6 - 3 - 1, 6 - 2 - 1, 6 - 4 - 1]
    assert rank_targets(constant, data, "test", "sampled").tolist() == [1, 1, 1]


def test_sampled_ranking_uses_exactly_the_stored_candidates(data):
    rng = np.random.default_rng(0)
    scores = rng.random((3, 6))
    targets = data.targets("test")
    negatives = data.negatives
    expected = [(scores[u, negatives[u]] >= scores[u, targets[u]]).sum() for u in range(3)]
    assert rank_targets(FixedScores(data, scores), data, "test", "sampled").tolist() == expected
    # raising every non-candidate item to the top changes nothing
    boosted = scores.copy()
    for u in range(3):
        others = np.setdiff1d(np.arange(6), np.r_[negatives[u], targets[u]])
        boosted[u, others] = 100.0
    assert rank_targets(FixedScores(data, boosted), data, "test", "sampled").tolist() == expected
    # raising a candidate above the target drops the target one place
    boosted[0, negatives[0, 0]] = scores[0, targets[0]] + 1
    assert rank_targets(FixedScores(data, boosted), data, "test", "sampled")[0] == 1


def test_n_negatives_beyond_the_stored_ones_is_an_error(data):
    with pytest.raises(ValueError, match="stores 1 negatives per user"):
        rank_targets(FixedScores(data, np.ones((3, 6))), data, "test", "sampled", n_negatives=5)


def test_tail_metrics_only_over_tail_targets(data):
    scores = np.zeros((3, 6))
    scores[0, 3] = scores[2, 0] = 1.0  # u0 and u2 rank their targets first; u1 ties its 3 others
    frame = evaluate(FixedScores(data, scores), data, "test", "full")
    assert frame["rank"].tolist() == [0, 3, 0]
    assert frame["is_tail"].tolist() == [True, True, True]  # targets d, f, a
    frame.loc[2, "is_tail"] = False  # make u2's target a head item to separate the subsets
    summary = summarize(frame)
    assert summary["overall"]["users"] == 3 and summary["tail"]["users"] == 2
    assert summary["overall"]["MRR"] == pytest.approx((1 + 1 / 4 + 1) / 3)
    assert summary["tail"]["MRR"] == pytest.approx((1 + 1 / 4) / 2)
    assert summary["tail"]["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5)) / 2)


def test_nan_scores_are_an_error(data):
    with pytest.raises(FloatingPointError, match="NaN"):
        rank_targets(FixedScores(data, np.full((3, 6), np.nan)), data, "test", "full")


def _frame(values, is_tail=None, popularity=None):
    n = len(values)
    return pd.DataFrame(
        {
            "user": np.arange(n),
            "target": np.arange(n) % 3,
            "is_tail": is_tail if is_tail is not None else np.zeros(n, bool),
            "popularity": popularity if popularity is not None else np.arange(n),
            "NDCG@10": values,
        }
    )


def test_paired_ttest_matches_hand_computation():
    a = _frame(np.array([0.1, 0.2, 0.3, 0.4]))
    b = _frame(np.array([0.2, 0.4, 0.6, 0.8]))  # differences 0.1 0.2 0.3 0.4
    d = np.array([0.1, 0.2, 0.3, 0.4])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    result = paired_ttest(a, b)
    assert result["t"] == pytest.approx(t)
    assert result["p"] == pytest.approx(2 * stats.t.sf(t, df=3))
    assert result["gain"] == pytest.approx(1.0) and result["n"] == 4
    assert math.isnan(paired_ttest(a, a)["p"])


def test_paired_ttest_refuses_different_targets():
    a, b = _frame(np.ones(4)), _frame(np.ones(4))
    b["target"] = b["target"] + 1
    with pytest.raises(ValueError, match="same users and targets"):
        paired_ttest(a, b)


def test_table1_gains_relative_to_baseline():
    rows = []
    for features, seeds in (("id", (0.10, 0.12)), ("sda", (0.15, 0.15))):
        for seed, value in enumerate(seeds):
            for subset, scale in (("overall", 1.0), ("tail", 0.5)):
                for metric in ("HR@10", "NDCG@10"):
                    rows.append(
                        {
                            "dataset": "d",
                            "model": "sasrec",
                            "features": features,
                            "item_repr": "x",
                            "seed": seed,
                            "protocol": "full",
                            "subset": subset,
                            "metric": metric,
                            "value": value * scale,
                        }
                    )
    table = table1(pd.DataFrame(rows))
    assert table.loc[("d", "sasrec", "id"), ("overall", "HR@10")] == pytest.approx(0.11)
    assert table.loc[("d", "sasrec", "sda"), ("overall", "HR@10 gain")] == pytest.approx(0.15 / 0.11 - 1)
    assert table.loc[("d", "sasrec", "sda"), ("tail", "NDCG@10 gain")] == pytest.approx(0.15 / 0.11 - 1)
    assert table.loc[("d", "sasrec", "id"), ("tail", "NDCG@10 gain")] == pytest.approx(0.0)


def test_gains_by_popularity_buckets():
    a = _frame(np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]), popularity=np.array([5, 1, 9, 2, 7, 3]))
    b = a.copy()
    b["NDCG@10"] = a["NDCG@10"] * 2
    out = gains_by_popularity(a, b, n_buckets=3)
    # least popular first: users with popularity (1, 2), (3, 5), (7, 9)
    assert out["popularity_min"].tolist() == [1, 3, 7] and out["popularity_max"].tolist() == [2, 5, 9]
    assert out["mean_a"].tolist() == pytest.approx([0.2, 0.25, 0.3])
    assert out["gain"].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_sequence_keys_up_to_each_split(data):
    def per_user(keys):
        return [sorted(int(k) % 6 for k in keys if k // 6 == u) for u in range(3)]

    # u0 abcd, u1 eaf, u2 bcefa (a..f = 0..5): train, then + validation item, then + test item
    assert per_user(sequence_keys(data, "train")) == [[0, 1], [4], [1, 2, 4]]
    assert per_user(sequence_keys(data, "valid")) == [[0, 1, 2], [0, 4], [1, 2, 4, 5]]
    assert per_user(sequence_keys(data, "test")) == [[0, 1, 2, 3], [0, 4, 5], [0, 1, 2, 4, 5]]
    with pytest.raises(ValueError, match="upto must be one of"):
        sequence_keys(data, "all")


def test_fresh_negatives_are_distinct_outside_the_evaluated_sequence(data):
    rng = np.random.default_rng(0)
    # up to the validation target u0 has a b c, u1 e a, u2 b c e f: 3, 4 and 2 items outside
    with pytest.warns(UserWarning, match="only 2 items lie outside the longest valid sequence; drawing 2"):
        valid = draw_negatives(data, "valid", 3, rng)
    assert valid.shape == (3, 2)
    for row, outside in zip(valid.tolist(), ([3, 4, 5], [1, 2, 3, 5], [0, 3])):
        assert len(set(row)) == 2 and set(row) <= set(outside)
    # uniform over what lies outside: u1's test candidate (b, c or d) over many passes
    counts = np.bincount([draw_negatives(data, "test", 1, rng)[1, 0] for _ in range(1500)], minlength=6)
    assert counts[[0, 4, 5]].sum() == 0 and np.allclose(counts[[1, 2, 3]] / 1500, 1 / 3, atol=0.04)


def test_distinct_sampling_takes_every_free_item_when_asked_for_all():
    n_items, excluded = 10, [[0, 1, 2, 9], [5], [9, 8, 7, 6]]
    keys = np.sort([u * n_items + i for u, items in enumerate(excluded) for i in items])
    out = sample_distinct_outside(keys, n_items, 3, 6, np.random.default_rng(0))
    assert sorted(out[0]) == [3, 4, 5, 6, 7, 8] and sorted(out[2]) == [0, 1, 2, 3, 4, 5]
    assert len(set(out[1])) == 6 and 5 not in out[1]


def test_given_candidates_replace_the_stored_negatives(data):
    scores = np.random.default_rng(1).random((3, 6))
    candidates = np.array([[4, 5], [1, 2], [3, 3]])
    ranks = rank_targets(FixedScores(data, scores), data, "test", "sampled", candidates=candidates)
    targets = data.targets("test")
    assert ranks.tolist() == [int((scores[u, candidates[u]] >= scores[u, targets[u]]).sum()) for u in range(3)]
    with pytest.raises(ValueError, match="candidates has 2 rows for 3 users"):
        rank_targets(FixedScores(data, scores), data, "test", "sampled", candidates=candidates[:2])


def test_fast_full_ranking_equals_a_plain_reference():
    """full_ranks (one product, sparse history read-back) against a per-user loop over a dense score
    matrix, on integer scores so ties are frequent; histories repeat items and contain the target."""
    from sda_lib.recsys.evaluate import full_ranks

    rng = np.random.default_rng(0)
    n_users, n_items = 7, 11
    vectors, items = rng.integers(-2, 3, (n_users, 3)), rng.integers(-2, 3, (n_items, 3))
    targets = rng.integers(0, n_items, n_users)
    histories = [list(rng.integers(0, n_items, rng.integers(0, 6))) + [targets[u]] for u in range(n_users)]
    scores = vectors @ items.T
    expected = []
    for u in range(n_users):
        excluded = set(histories[u]) - {targets[u]}
        others = [j for j in range(n_items) if j != targets[u] and j not in excluded]
        expected.append(sum(scores[u, j] >= scores[u, targets[u]] for j in others))
    pairs = sorted({(u, i) for u in range(n_users) for i in histories[u] if i != targets[u]})
    rows, masked = (torch.tensor(x) for x in zip(*pairs))
    as_float = [torch.as_tensor(x, dtype=torch.float32) for x in (vectors, items)]
    assert full_ranks(*as_float, torch.as_tensor(targets), rows, masked).tolist() == expected


def test_full_ranking_in_blocks_of_one_user_matches_one_block(data):
    """max_scores below one user's row still ranks one user at a time, with the same result."""
    scores = np.random.default_rng(1).integers(0, 3, (3, 6)).astype(float)
    whole = rank_targets(FixedScores(data, scores), data, "test", "full")
    assert rank_targets(FixedScores(data, scores), data, "test", "full", max_scores=1).tolist() == whole.tolist()
