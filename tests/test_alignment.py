import numpy as np
import pytest

from sda_lib.analysis.alignment import alignment_report, cross_modal_ranks, knn, neighbourhood_overlap


def test_ranks_by_hand():
    t = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    v = np.array([[1, 0.1], [1, 0], [1, 1]], dtype=float)
    # item 0: own image cos .995, image 1 cos 1.0 beats it -> rank 1
    # item 1: own image cos 0, image 0 .0995 and image 2 .707 beat it -> rank 2
    # item 2: own image cos 1.0 is the best -> rank 0
    assert list(cross_modal_ranks(t, v)) == [1, 2, 0]


def test_identical_modalities_align_perfectly():
    x = np.random.default_rng(0).normal(size=(50, 8))
    r = alignment_report(x, x, k=10)
    assert r["t2i_recall@10"] == 1.0 and r["matched_cosine"] == pytest.approx(1.0)
    assert r["overlap_text_image@10"] == 1.0
    # cross-modal neighbours of a text include its own image, intra-modal ones exclude it
    assert r["overlap_text_cross@10"] == pytest.approx(0.9)


def test_unrelated_modalities_score_near_chance():
    rng = np.random.default_rng(0)
    r = alignment_report(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), k=10)
    assert r["t2i_recall@10"] < 0.06 and abs(r["cosine_gap"]) < 0.05


def test_knn_orders_by_similarity():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.5, 0.5]])
    assert knn(x, 2)[0].tolist() == [1, 3]
    assert neighbourhood_overlap(np.array([[1, 2]]), np.array([[2, 5]])) == 0.5
