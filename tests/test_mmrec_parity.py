"""mmrec-parity's own parts: skipped with the set-up steps without MMRec, MMRec's masking rule
against the workbench's on the same weights, its negatives, and the summary's verdicts."""

import numpy as np
import pytest
import torch

from benchmarks import mmrec
from sda_lib.recsys import InteractionData, evaluate
from sda_lib.recsys.experiment import build_model
from sda_lib.recsys.train import seed_everything


def test_skipped_with_the_set_up_steps_when_mmrec_is_absent(monkeypatch):
    monkeypatch.setattr(mmrec, "MMREC_PATH", "")
    found = mmrec.mmrec_parity(mmrec.Options(dataset="toy-tiny"))
    assert found.headline == "skipped: MMRec absent"
    assert "set it up with the commands in benchmarks/mmrec.py" in found.values["skipped"]


def test_mmrec_rule_ranks_the_validation_item_too(toy_tiny):
    """MMRec masks only training items: a test rank is the workbench's rank plus one exactly when
    the user's validation item scores at least as high as the test item."""
    data = InteractionData.from_prepared(toy_tiny)
    seed_everything(0)
    model = build_model("vbpr", data, dim=8)
    ranks = mmrec._ranks_masking_train(model, data, block=7)  # several blocks
    ours = evaluate(model, data, "test", "full")["rank"].to_numpy()
    with torch.no_grad():
        tables = model.tables()
        scores = tables.users @ tables.items.T
    users = np.arange(data.n_users)
    valid_above = (scores[users, data.targets("valid")] >= scores[users, data.targets("test")]).numpy()
    np.testing.assert_array_equal(ranks, ours + valid_above)
    assert valid_above.any() and not valid_above.all()


def test_metrics_from_ranks_by_hand():
    found = mmrec._metrics(np.array([0, 9, 10, 25]))
    assert found["Recall@10"] == 0.5 and found["Recall@20"] == 0.75
    assert found["NDCG@10"] == pytest.approx((1 + 1 / np.log2(11)) / 4)
    assert found["NDCG@20"] == pytest.approx((1 + 1 / np.log2(11) + 1 / np.log2(12)) / 4)


def test_vbpr_negatives_come_only_from_items_seen_in_training_as_mmrecs(toy_tiny):
    data = InteractionData.from_prepared(toy_tiny)
    users = np.repeat(np.arange(data.n_users), 50)
    trained = set(data.train_pairs()[1].tolist())
    assert len(trained) < data.n_items  # toy-tiny has items no user trained on
    for negatives, pool in (("train-items", trained), ("all", set(range(data.n_items)))):
        vbpr = build_model("vbpr", data, None, "id", dim=4, negatives=negatives)
        batch_users, _, drawn = (b.numpy() for b in next(vbpr.train_batches(10**9, np.random.default_rng(0))))
        assert set(drawn.tolist()) <= pool
        assert not np.isin(batch_users * data.n_items + drawn, data.seen_keys).any()
    assert set(drawn.tolist()) - trained  # "all" reaches the untrained items
    drawn = data.sample_unseen(users, np.random.default_rng(0), data.train_items)
    assert set(drawn.tolist()) <= trained and not np.isin(users * data.n_items + drawn, data.seen_keys).any()


def test_summary_verdicts_from_runs_by_hand():
    def run(r20, n20, seconds):
        return {
            "test": {"Recall@10": 0.1, "NDCG@10": 0.05, "Recall@20": r20, "NDCG@20": n20},
            "best_epoch": 10,
            "train_seconds": [seconds],
        }

    runs = {
        ("workbench", "vbpr"): [run(0.20, 0.10, 0.1), run(0.22, 0.11, 0.1)],
        ("MMRec", "vbpr"): [run(0.21, 0.105, 0.3), run(0.21, 0.105, 0.3)],
        ("workbench", "slmrec"): [run(0.30, 0.15, 1.0), run(0.30, 0.15, 1.0)],
        ("MMRec", "slmrec"): [run(0.20, 0.10, 1.0), run(0.20, 0.10, 1.0)],
    }

    class Table:
        split_dims = (4, 4)

    found = mmrec._summary(mmrec.Options(dataset="toy"), Table(), runs, [0, 1])
    verdicts = found.values["verdicts"]
    assert verdicts["vbpr Recall@20"] == {
        "difference": 0.0,
        "two_standard_errors": pytest.approx(0.0952, abs=1e-4),
        "within": True,
    }
    assert verdicts["slmrec NDCG@20"]["difference"] == 0.5 and not verdicts["slmrec NDCG@20"]["within"]
    assert verdicts["vbpr epoch speed-up"] == 3.0 and found.values["status"] == "MISSED"
