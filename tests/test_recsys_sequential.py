"""Training options of the sequential recommenders, each against hand computation or an invariant:
early-stopping rules, several rules over one training, negative-sampling sets, BERT4Rec's cloze
variants and binary loss, the authors' alignment loss, and the named presets."""

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from benchmarks.reference import summarize_seeds
from sda_lib.data import PreparedDataset, PrepareParams
from sda_lib.data.catalogue import Catalogue
from sda_lib.data.prepare import prepare_catalogue
from sda_lib.method.features import FeatureTable
from sda_lib.recsys import RECOMMENDERS, InteractionData, Recommender, TrainConfig, build_model, fit
from sda_lib.recsys import train as train_module
from sda_lib.recsys.base import PAD
from sda_lib.recsys.bert4rec import BERT4Rec
from sda_lib.recsys.evaluate import METRICS
from sda_lib.recsys.presets import PRESETS, get_preset, pretrain_id_items
from sda_lib.recsys.sasrec import SASRec
from sda_lib.recsys.train import fit_rules, seed_everything

# toy-tiny has fewer than 100 items outside its longest sequences: fewer negatives, as expected
pytestmark = pytest.mark.filterwarnings("ignore:.*items lie outside:UserWarning")

# Items "a".."h" are 0..7. u0 trains on a b c d, validates on e, is tested on f.
SEQUENCES = {"u0": "abcdef", "u1": "ghabc", "u2": "dgha", "u3": "hbfcgd"}


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hand-seq")
    items = pd.DataFrame({"item_id": list("abcdefgh"), "title": list("ABCDEFGH"), "image_path": [None] * 8})
    inter = pd.DataFrame(
        [(u, i, t) for u, seq in SEQUENCES.items() for t, i in enumerate(seq)],
        columns=["user_id", "item_id", "timestamp"],
    )
    with warnings.catch_warnings():  # 8 items cannot give every user 2 stored negatives outside its sequence
        warnings.simplefilter("ignore", UserWarning)
        prepare_catalogue(
            Catalogue("hand", items, inter, ["title"]), folder, PrepareParams(n_negatives=1, tail_count_on="train")
        )
    return InteractionData.from_prepared(PreparedDataset.load(folder))


@pytest.fixture(scope="module")
def tiny(toy_tiny):
    return InteractionData.from_prepared(toy_tiny)


def features(n_items, width=12, seed=0):
    """A random feature table, half text, half image."""
    array = np.random.default_rng(seed).normal(size=(n_items, width)).astype(np.float32)
    half = width // 2
    return FeatureTable(
        array[:, :half], array[:, half:], array, {"dims": {"features_text": half, "features_image": width - half}}
    )


# ---------------------------------------------------------------- early stopping


class Drifting(Recommender):
    """One weight that moves at every step, so each epoch's weights are distinct."""

    name = "drifting"

    def __init__(self):
        super().__init__(None)
        self.w = nn.Parameter(torch.zeros(1))

    def train_batches(self, batch_size, rng):
        yield (torch.ones(1),)

    def loss(self, x):
        return (self.w - x).pow(2).sum()


# Validation (HR@5, NDCG@5) per epoch.
SCRIPT = [
    (0.10, 0.10),  # 1: the first validation always improves
    (0.20, 0.05),  # 2: HR@5 up, NDCG@5 down
    (0.15, 0.06),  # 3: NDCG@5 beats the saved vector's 0.05, though not the best-ever 0.10
    (0.12, 0.055),  # 4: nothing beats the saved (0.15, 0.06)
    (0.30, 0.30),  # 5: both up
    (0.10, 0.10),  # 6
    (0.10, 0.10),  # 7
]


@pytest.fixture
def scripted(monkeypatch):
    """Replace validation by SCRIPT; returns {epoch: weight when validated}."""
    seen = {}

    def validate(model, data, config, epoch):
        seen[epoch] = model.w.detach().clone()
        hr, ndcg = SCRIPT[epoch - 1]
        return {**dict.fromkeys(METRICS, 0.0), "HR@5": hr, "NDCG@5": ndcg}

    monkeypatch.setattr(train_module, "validate", validate)
    return seen


@pytest.mark.parametrize(
    "monitor, improve, best, epochs_run",
    [
        (("HR@5", "NDCG@5"), "any", 5, 7),  # improves at 1 2 3 5; stops after 6 and 7
        (("HR@5", "NDCG@5"), "all", 1, 3),  # 2 and 3 each lower one metric
        ("HR@5", "any", 2, 4),
        ("NDCG@5", "any", 1, 3),
    ],
)
def test_stopping_rules_on_a_scripted_validation(scripted, monitor, improve, best, epochs_run):
    config = TrainConfig(epochs=len(SCRIPT), patience=2, monitor=monitor, improve=improve, progress=False)
    model = Drifting()
    result = fit(model, None, config)
    assert (result.best_epoch, len(result.history), result.stopped_early) == (best, epochs_run, True)
    assert result.best_score == SCRIPT[best - 1][0 if config.monitored[0] == "HR@5" else 1]
    torch.testing.assert_close(model.w.detach(), scripted[best])  # the kept weights are that epoch's
    assert result.history["valid_NDCG@5"].tolist() == [s[1] for s in SCRIPT[:epochs_run]]


def test_bad_stopping_settings_name_the_value():
    with pytest.raises(ValueError, match="'HR@7'"):
        TrainConfig(monitor=("HR@5", "HR@7"))
    with pytest.raises(ValueError, match="improve must be one of .* got 'most'"):
        TrainConfig(improve="most")
    with pytest.raises(ValueError, match="monitor_protocol must be one of .* got 'sample'"):
        TrainConfig(monitor_protocol="sample")
    with pytest.raises(ValueError, match="apply to monitor_protocol='sampled'"):
        TrainConfig(fresh_negatives=True)
    assert TrainConfig(monitor=["HR@5", "MRR"]).monitor == ("HR@5", "MRR")  # as read back from JSON


def test_several_rules_over_one_training_equal_separate_fits(tiny, tmp_path):
    base = TrainConfig(epochs=10, batch_size=64, lr=1e-2, progress=False)
    rules = {
        "full": replace(base, patience=1, monitor=("HR@10", "NDCG@10")),
        "sampled": replace(
            base, patience=3, monitor="MRR", monitor_protocol="sampled", monitor_negatives=20, fresh_negatives=True
        ),
    }

    def model():
        seed_everything(0)
        return build_model("sasrec", tiny)

    together = fit_rules(model(), tiny, rules, checkpoint_dir=tmp_path)
    checkpoints = {"last.pt", "previous.pt", "best-full.pt", "best-sampled.pt"}
    assert {f.name for f in tmp_path.iterdir()} == checkpoints | {f"{name}.sha256" for name in checkpoints}
    # the rules part ways: "full" stops early while "sampled" trains on
    assert len(together["full"][0].history) < len(together["sampled"][0].history)
    # interrupted after 2 epochs and resumed: the same
    fit_rules(model(), tiny, {k: replace(r, epochs=2) for k, r in rules.items()}, tmp_path / "resumed")
    resumed = fit_rules(model(), tiny, rules, tmp_path / "resumed")
    for name in rules:
        pd.testing.assert_frame_equal(
            together[name][0].history.drop(columns="seconds"), resumed[name][0].history.drop(columns="seconds")
        )
    with pytest.raises(ValueError, match="written for other stopping rules"):
        fit_rules(model(), tiny, {"full": rules["full"]}, tmp_path / "resumed")
    for name, rule in rules.items():
        alone = model()
        result = fit(alone, tiny, rule)
        pd.testing.assert_frame_equal(
            together[name][0].history.drop(columns="seconds"), result.history.drop(columns="seconds")
        )
        assert together[name][0].best_epoch == result.best_epoch
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(together[name][1][key], value)


def test_rules_must_share_their_training():
    rules = {"a": TrainConfig(lr=1e-3), "b": TrainConfig(lr=1e-2, monitor="MRR")}
    with pytest.raises(ValueError, match="rules 'a' and 'b' train differently.*'lr'"):
        fit_rules(Drifting(), None, rules)


def test_fresh_validation_negatives_are_redrawn_each_epoch_and_reproducible(tiny):
    config = TrainConfig(monitor_protocol="sampled", monitor_negatives=5, fresh_negatives=True)
    seed_everything(0)
    model = build_model("sasrec", tiny)
    first, again = (train_module.validate(model, tiny, config, epoch=1) for _ in range(2))
    assert first == again
    assert train_module.validate(model, tiny, config, epoch=2) != first


# ---------------------------------------------------------------- training negatives


def negatives_per_user(model, data, epochs=60):
    """{user: items drawn as its negatives at real positions} over several epochs of SASRec batches."""
    rows = {tuple(w): u for u, w in zip(model.train_users, model.train_inputs.tolist())}
    drawn = {}
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        for inputs, _, negatives in model.train_batches(64, rng):
            for window, negs in zip(inputs.tolist(), negatives.tolist()):
                real = [n - 1 for t, n in zip(window, negs) if t != PAD]
                drawn.setdefault(rows[tuple(window)], set()).update(real)
    return drawn


def test_sequence_negatives_avoid_the_whole_sequence_train_negatives_only_training_items(hand):
    seed_everything(0)
    whole = negatives_per_user(SASRec(hand, dim=8, n_heads=1, negatives="sequence"), hand)
    train = negatives_per_user(SASRec(hand, dim=8, n_heads=1, negatives="train"), hand)
    items = "abcdefgh"
    for user, sequence in enumerate(SEQUENCES.values()):
        inside = {items.index(i) for i in sequence}
        assert whole[user] == set(range(8)) - inside
        # the validation and test items can be drawn when only training items are excluded
        assert train[user] == set(range(8)) - {items.index(i) for i in sequence[:-2]}
    with pytest.raises(ValueError, match="negatives must be one of .* got 'all'"):
        SASRec(hand, negatives="all")


# ---------------------------------------------------------------- BERT4Rec


def test_bert4rec_binary_loss_equals_hand_computation(hand):
    seed_everything(0)
    model = BERT4Rec(hand, dim=8, n_heads=1, max_len=6, dropout=0.0, mask_prob=0.5, loss="bce", head=False)
    inputs, labels, negatives = next(iter(model.train_batches(16, np.random.default_rng(0))))
    chosen = labels != PAD
    assert ((negatives != PAD) == chosen).all()
    with torch.no_grad():
        loss = model.loss(inputs, labels, negatives).item()
        items = model.item_encoder().double()
        hidden = model.encode(inputs, items.float()).double()
    real = inputs != PAD
    rows = hidden[chosen[real]]
    pos = (rows * items[labels[chosen] - 1]).sum(1)
    neg = (rows * items[negatives[chosen] - 1]).sum(1)
    expected = (-torch.log(torch.sigmoid(pos)) - torch.log(1 - torch.sigmoid(neg))).mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    # each negative lies outside its user's training items
    users = {tuple(w): u for u, w in zip(model.train_users, model.train_windows.tolist())}
    for window, negs in zip(torch.where(chosen, labels, inputs).tolist(), negatives.tolist()):
        training = {"abcdefgh".index(i) + 1 for i in list(SEQUENCES.values())[users[tuple(window)]][:-2]}
        assert not {n for n in negs if n} & training


def test_bert4rec_cloze_variants(tiny):
    seed_everything(0)
    model = BERT4Rec(tiny, mask_prob=0.6, random_prob=0.1, keep_prob=0.1, last_item_copies=True)
    windows = model.train_windows
    n, token = len(windows), model.mask_token
    shown = {"mask": 0, "other": 0, "same": 0}
    rng = np.random.default_rng(0)
    for _ in range(20):
        inputs, labels = (t.numpy() for t in next(iter(model.train_batches(10 * n, rng))))
        assert len(inputs) == 2 * n
        # labels put back give every training window twice: once cloze, once last-item-masked
        restored = np.where(labels != PAD, labels, inputs)
        assert sorted(map(tuple, restored.tolist())) == sorted(map(tuple, np.concatenate([windows, windows]).tolist()))
        copies = (labels[:, :-1] == PAD).all(1) & (inputs[:, -1] == token) & (inputs[:, :-1] == restored[:, :-1]).all(1)
        assert copies.sum() >= n
        chosen = labels != PAD
        shown["mask"] += (inputs[chosen] == token).sum() - n  # less the copies' masks
        shown["same"] += (inputs[chosen] == labels[chosen]).sum()
        shown["other"] += ((inputs[chosen] != token) & (inputs[chosen] != labels[chosen])).sum()
    total = sum(shown.values())
    assert shown["mask"] / total == pytest.approx(0.8, abs=0.03)
    assert shown["same"] / total == pytest.approx(0.1 + 0.1 / tiny.n_items, abs=0.03)  # kept, or drawn itself
    assert shown["other"] / total == pytest.approx(0.1, abs=0.03)
    with pytest.raises(ValueError, match="random_prob and keep_prob"):
        BERT4Rec(tiny, random_prob=0.5, keep_prob=0.5)


def test_bert4rec_defaults_draw_as_before(tiny):
    """random_prob = keep_prob = 0 draws nothing extra: every chosen position shows the mask."""
    seed_everything(0)
    model = BERT4Rec(tiny)
    inputs, labels = next(iter(model.train_batches(10_000, np.random.default_rng(3))))
    assert ((inputs == model.mask_token) == (labels != PAD)).all()
    assert model.head is not None and BERT4Rec(tiny, head=False).head is None


# ---------------------------------------------------------------- alignment loss


def contrastive_loss2(X, Y, tau):
    """numpy transcription of liuqidong07/LLMEmb models/utils.py Contrastive_Loss2(X, Y)."""

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    logits = X @ Y.T / tau
    targets = np.exp(log_softmax((Y @ Y.T + X @ X.T) / 2 * tau))
    x_loss = -(targets * log_softmax(logits)).sum(1)
    y_loss = -(targets.T * log_softmax(logits.T)).sum(1)
    return ((y_loss + x_loss) / 2).mean()


@pytest.mark.parametrize("model_class", [SASRec, BERT4Rec])
@pytest.mark.parametrize("item_repr", ["features", "id+features"])
def test_alignment_loss_equals_the_authors_formula(tiny, model_class, item_repr):
    reference = np.random.default_rng(1).normal(size=(tiny.n_items, 8)).astype(np.float32)
    seed_everything(0)
    model = model_class(
        tiny,
        item_repr,
        features(tiny.n_items),
        dim=8,
        n_heads=1,
        dropout=0.0,
        align_items=reference,
        align_weight=0.3,
        align_tau=2.0,
    )
    batch = next(iter(model.train_batches(32, np.random.default_rng(0))))
    inputs, labels = batch[0], batch[1]
    targets = (labels[inputs != PAD] if model_class is SASRec else labels[labels != PAD]) - 1
    with torch.no_grad():
        aligned = model.loss(*batch).item()
        model.align_weight = 0.0
        plain = model.loss(*batch).item()
        adapted = model.item_encoder.adapter().double().numpy()
    expected = contrastive_loss2(reference[targets].astype(np.float64), adapted[targets], 2.0)
    assert aligned - plain == pytest.approx(0.3 * expected, rel=1e-4)


def test_alignment_needs_features_and_a_matching_table(tiny):
    table = np.zeros((tiny.n_items, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="item_repr='id' has none"):
        SASRec(tiny, dim=8, align_items=table, align_weight=0.1)
    with pytest.raises(ValueError, match="needs align_items"):
        SASRec(tiny, "features", features(tiny.n_items), dim=8, align_weight=0.1)
    with pytest.raises(ValueError, match=r"shape \(80, 8\), expected \(80, 16\)"):
        SASRec(tiny, "features", features(tiny.n_items), dim=16, align_items=table, align_weight=0.1)
    assert not hasattr(SASRec(tiny, dim=8, align_items=table), "align_items")  # weight 0: off


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_presets_build_and_train_one_epoch(tiny, name, model_name):
    preset = get_preset(name)
    item_repr = preset.item_repr.get(model_name, "id")
    table = features(tiny.n_items) if item_repr != "id" else None
    seed_everything(0)
    model = RECOMMENDERS[model_name](tiny, item_repr, table, **preset.params(model_name))
    # toy-tiny stores 50 negatives per user, fewer than S3-Rec's 99
    stored = preset.train.monitor_protocol == "sampled" and not preset.train.fresh_negatives
    result = fit(
        model, tiny, preset.training(epochs=1, progress=False, **({"monitor_negatives": 50} if stored else {}))
    )
    assert len(result.history) == 1 and np.isfinite(result.history["loss"]).all()


def test_authors_preset_trains_each_model_as_its_source(tiny):
    """SASRec and BERT4Rec as the SDA code trains them; VBPR and SLMRec as the first author's MMRec
    fork does: validated on HR@10 over the stored candidates, 1000 epochs, patience 20, batches of
    2048 interactions; SLMRec with its recorded per-dataset pick (ssl_alpha 0.5 on sports)."""
    preset = get_preset("authors")
    assert preset.training("sasrec") == preset.training() == preset.train
    assert preset.training("sasrec").monitor == "NDCG@10" and preset.training("sasrec").fresh_negatives
    for name in ("vbpr", "slmrec"):
        config = preset.training(name)
        assert (config.monitor, config.monitor_protocol, config.monitor_negatives, config.fresh_negatives) == (
            "HR@10",
            "sampled",
            None,
            False,
        )
        assert (config.epochs, config.patience, config.batch_size) == (1000, 20, 2048)
    assert (preset.training("slmrec").lr, preset.training("slmrec").weight_decay) == (1e-4, 1e-4)
    assert (preset.training("vbpr").lr, preset.training("vbpr").weight_decay) == (1e-3, 0.0)
    assert preset.params("slmrec", "sports") == {"ssl_weight": 0.5}
    assert preset.params("slmrec", "beauty") == {} and preset.params("slmrec", "toys", dim=8) == {"dim": 8}
    assert preset.training("vbpr", epochs=1).epochs == 1 and preset.training("vbpr").epochs == 1000
    seed_everything(0)
    model = RECOMMENDERS["vbpr"](tiny, "id+features", features(tiny.n_items), dim=8)
    result = fit(model, tiny, preset.training("vbpr", epochs=2, progress=False))
    assert len(result.history) == 2 and {"valid_HR@10"} <= set(result.history.columns)
    assert result.best_score == result.history["valid_HR@10"].iloc[result.best_epoch - 1]


@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_authors_preset_with_alignment_to_a_pretrained_id_model(tiny, toy_tiny, tmp_path, model_name):
    preset = get_preset("authors")
    quick = preset.training(epochs=1, progress=False)
    path = pretrain_id_items(toy_tiny, model_name, out=tmp_path / "ids", train=quick)
    assert np.load(path).shape == (tiny.n_items, 128)
    assert pretrain_id_items(toy_tiny, model_name, out=tmp_path / "ids") == path  # read back
    seed_everything(0)
    params = preset.params(model_name, align_items=str(path), align_weight=preset.align_weights[2])
    model = RECOMMENDERS[model_name](tiny, "features", features(tiny.n_items), **params)
    result = fit(model, tiny, quick)
    assert np.isfinite(result.history["loss"]).all()
    with pytest.raises(ValueError, match="recommender preset must be one of .*, got 'paper'"):
        get_preset("paper")


def test_seed_summary_mean_spread_and_published():
    runs = pd.DataFrame(
        {
            "seed": [0, 1, 2],
            "protocol": "full",
            "metric": "HR@10",
            "value": [0.058, 0.060, 0.062],
            "best_epoch": [40, 50, 60],
            "epochs_run": [50, 60, 70],
        }
    )
    row = summarize_seeds(runs, "beauty", "sasrec").iloc[0]
    assert row["mean"] == pytest.approx(0.060) and row["std"] == pytest.approx(0.002)
    assert row["published"] == 0.0605 and row["relative"] == pytest.approx(0.060 / 0.0605 - 1)
    assert row["best_epochs"] == "40/50 50/60 60/70"
