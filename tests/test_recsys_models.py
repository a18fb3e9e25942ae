"""The four recommenders, their item representations, training and bad input, on toy-tiny."""

import math
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.peers import write_atomic_file
from sda_lib.data import DataError, PreparedDataset, prepare_dataset
from sda_lib.method.features import FeatureError, FeatureTable, item_order_checksum
from sda_lib.recsys import (
    RECOMMENDERS,
    InteractionData,
    RunKey,
    TrainConfig,
    build_model,
    fit,
    model_train_config,
    replacement_settings,
    run_experiment,
    table1,
    train_grid,
)
from sda_lib.recsys.base import PAD, FeatureAdapter, ItemEncoder, resolve_features
from sda_lib.recsys.presets import get_preset
from sda_lib.recsys.slmrec import _normalised_graph, _SymmetricProduct
from sda_lib.recsys.train import seed_everything

FAST = TrainConfig(epochs=2, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    with warnings.catch_warnings():  # toy-tiny is too small for 100 negatives per user; fewer is fine
        warnings.simplefilter("ignore", UserWarning)
        folder = prepare_dataset("toy-tiny", out=tmp_path_factory.mktemp("toy") / "data")
    return PreparedDataset.load(folder)


@pytest.fixture(scope="module")
def data(dataset):
    return InteractionData.from_prepared(dataset)


def make_table(dataset, rows=None, name=None, d_text=6, d_image=4, seed=0) -> FeatureTable:
    n = dataset.n_items if rows is None else rows
    rng = np.random.default_rng(seed)
    text, image = (rng.normal(size=(n, d)).astype(np.float32) for d in (d_text, d_image))
    text, image = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (text, image))  # unit rows, as extractors
    manifest = {
        "dataset": name or dataset.name,
        "item_order": item_order_checksum(dataset.items["item_id"]),
        "extractor": "random",
        "dims": {"text": d_text, "image": d_image, "features_text": d_text, "features_image": d_image},
    }
    return FeatureTable(text=text, image=image, features=np.concatenate([text, image], 1), manifest=manifest)


def test_sasrec_attention_is_causal(data):
    seed_everything(0)
    model = build_model("sasrec", data).eval()
    items = model.tables().items
    tokens = torch.tensor([[0, 0, 3, 7, 9, 2], [0, 5, 1, 4, 6, 8]])
    changed = tokens.clone()
    changed[:, -1] = torch.tensor([11, 12])
    before, after = model.encode(tokens, items), model.encode(changed, items)
    lengths = (tokens != PAD).sum(1).tolist()
    ends = np.cumsum(lengths)
    for row, end in enumerate(ends):
        earlier = slice(end - lengths[row], end - 1)
        torch.testing.assert_close(before[earlier], after[earlier])  # earlier positions unchanged
        assert not torch.allclose(before[end - 1], after[end - 1])  # the changed position moved


def test_bert4rec_attention_is_bidirectional(data):
    seed_everything(0)
    model = build_model("bert4rec", data).eval()
    items = model.tables().items
    tokens = torch.tensor([[0, 3, 7, 9, 2]])
    changed = tokens.clone()
    changed[0, -1] = 11
    assert not torch.allclose(model.encode(tokens, items)[0], model.encode(changed, items)[0])


def test_packed_encoding_equals_encoding_each_window_alone(data):
    """Batches mix window lengths; grouping them for attention must not change any output."""
    seed_everything(0)
    model = build_model("sasrec", data, max_len=20).eval()
    items = model.tables().items
    rng = np.random.default_rng(0)
    lengths = [1, 20, 3, 9, 17, 5, 2]
    tokens = torch.zeros(len(lengths), 20, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens[row, 20 - n :] = torch.from_numpy(rng.integers(1, data.n_items + 1, n))
    packed = model.encode(tokens, items)
    # each window alone and unpadded: no grouping, no padding, same positions (right-aligned)
    alone = torch.cat([model.encode(tokens[row : row + 1, 20 - n :], items) for row, n in enumerate(lengths)])
    assert packed.shape == (sum(lengths), 64)
    torch.testing.assert_close(packed, alone)


def test_bert4rec_masking(data):
    seed_everything(0)
    model = build_model("bert4rec", data, mask_prob=0.3)
    inputs, labels = map(torch.cat, zip(*model.train_batches(1000, np.random.default_rng(0))))
    windows = torch.from_numpy(model.train_windows)
    masked = inputs == model.mask_token
    assert masked.any(1).all()  # at least one masked position per window
    assert (labels[masked] != PAD).all() and (labels[~masked] == PAD).all()
    assert (inputs[~masked] != model.mask_token).all()
    # putting the labels back restores the training windows (rows come shuffled: compare as sets)
    restored = torch.where(masked, labels, inputs)
    assert sorted(map(tuple, restored.tolist())) == sorted(map(tuple, windows.tolist()))
    rate = masked.sum() / (windows != PAD).sum()
    assert 0.2 < rate < 0.45  # 0.3 plus the forced masks on windows the draw left unmasked


@pytest.mark.parametrize("model_name", list(RECOMMENDERS))
def test_each_model_trains_and_its_loss_decreases(data, dataset, model_name):
    table = make_table(dataset)
    seed_everything(0)
    params = {"dropout": 0.0} if model_name in ("sasrec", "bert4rec") else {}
    model = build_model(model_name, data, table, "id+features", **params)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    batch = next(iter(model.train_batches(128, np.random.default_rng(0))))
    losses = []
    for _ in range(15):
        loss = model.loss(*batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_feature_adapter_is_the_two_layer_linear_map():
    features = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32) * 100
    adapter = FeatureAdapter(features, dim=3, hidden=11)
    out = adapter()
    assert out.shape == (7, 3)
    scaled = features / np.linalg.norm(features, axis=1).mean()  # rescaled to mean row norm 1
    torch.testing.assert_close(out, adapter.outer(adapter.inner(torch.from_numpy(scaled))))
    assert adapter.inner.weight.shape == (11, 5) and adapter.outer.weight.shape == (3, 11)
    assert "features" not in adapter.state_dict()  # frozen table stays out of checkpoints
    assert all(p.requires_grad for p in adapter.parameters())


def test_item_encoder_sums_ids_and_adapted_features():
    features = np.ones((4, 6), dtype=np.float32)
    both = ItemEncoder(4, 8, "id+features", features)
    torch.testing.assert_close(both(), both.ids.weight + both.adapter())
    assert ItemEncoder(4, 8, "features", features).ids is None
    assert ItemEncoder(4, 8, "id").adapter is None


def test_vbpr_and_slmrec_take_text_and_image_as_channels(data, dataset):
    table = make_table(dataset, d_text=6, d_image=4)
    vbpr = build_model("vbpr", data, table, "id+features", dim=8)
    # MMRec: one linear map over the concatenated raw [text ; image] features, beside the ID embedding
    assert vbpr.linear.in_features == 10 and vbpr.adapters is None
    torch.testing.assert_close(vbpr.features, torch.from_numpy(table.features))  # raw: no scaling
    tables = vbpr.tables()
    assert tables.items.shape == (data.n_items, 16) and tables.users.shape == (data.n_users, 16)
    assert (vbpr.linear.bias == 0).all()
    adapters = build_model("vbpr", data, table, "id+features", dim=8, content="adapters")
    assert [a.features.shape[1] for a in adapters.adapters] == [6, 4]
    assert adapters.tables().items.shape == (data.n_items, 24)
    assert build_model("vbpr", data, table, "features", dim=8).tables().items.shape == (data.n_items, 8)
    assert build_model("vbpr", data, dim=8).tables().items.shape == (data.n_items, 8)  # BPR-MF
    slmrec = build_model("slmrec", data, table, "id+features", dim=8)
    assert slmrec.channel_names == ["id", "text", "image"]
    assert [m.linear.in_features for m in slmrec.content.values()] == [6, 4]
    assert slmrec.fuse_items.in_features == 24
    assert slmrec.tables().items.shape == (data.n_items, 8)
    with pytest.raises(ValueError, match="ssl_task='fac' aligns the ID channel"):
        build_model("slmrec", data, table, "features", dim=8)
    features_only = build_model("slmrec", data, table, "features", dim=8, ssl_task="fd+fm", content="adapters")
    assert features_only.ids is None and features_only.fuse_items.in_features == 16


def test_build_model_selects_feature_parts(data, dataset):
    table = make_table(dataset, d_text=6, d_image=4)
    text = build_model("slmrec", data, table, "id+features", parts=("text",), dim=8)
    assert text.channel_names == ["id", "text"] and set(text.fac) == {"g_i_iv", "g_iv_iva", "g_iva_ivat", "g_t_ivat"}
    image = build_model("slmrec", data, table, "id+features", parts=("image",), dim=8)
    assert image.channel_names == ["id", "image"] and set(image.fac) == {"g_i_iv", "g_v_iv"}
    assert build_model("vbpr", data, table, "id+features", parts=("image",), dim=8).linear.in_features == 4
    assert build_model("sasrec", data, table, "features", parts=("text",)).item_encoder.adapter.features.shape[1] == 6


def hand_data(n_users: int, n_items: int, sequences) -> InteractionData:
    """An InteractionData from sequences given by hand (last item test, the one before valid)."""
    items = np.concatenate([np.asarray(s) for s in sequences]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return InteractionData(
        "hand",
        n_users,
        n_items,
        items,
        offsets,
        np.zeros(n_items, bool),
        np.ones(n_items, np.int64),
        np.zeros((n_users, 1), np.int64),
    )


def hand_table(text, image) -> FeatureTable:
    text, image = np.asarray(text, np.float32), np.asarray(image, np.float32)
    dims = {
        "text": text.shape[1],
        "image": image.shape[1],
        "features_text": text.shape[1],
        "features_image": image.shape[1],
    }
    return FeatureTable(text, image, np.concatenate([text, image], 1), {"dataset": "hand", "dims": dims})


def test_vbpr_score_and_regulariser_by_hand():
    """2 users, 3 items: item vector [ID ; W [text ; image] + b], MMRec's BPR and EmbLoss."""
    data = hand_data(2, 3, [[0, 1, 2], [1, 2, 0]])
    table = hand_table([[1, 0], [0, 1], [1, 1]], [[2], [0], [1]])  # raw rows [1 0 2], [0 1 0], [1 1 1]
    model = build_model("vbpr", data, table, "id+features", dim=2, reg=0.5)
    with torch.no_grad():
        model.ids.copy_(torch.tensor([[1.0, 0], [0, 1], [0, 0]]))
        model.linear.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
        model.linear.bias.copy_(torch.tensor([0.0, 1]))
        model.users.copy_(torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]]))
    items = model.tables().items
    # projections [1 3], [0 1], [1 2] beside the IDs
    torch.testing.assert_close(items, torch.tensor([[1.0, 0, 1, 3], [0, 1, 0, 1], [0, 0, 1, 2]]))
    scores = model.tables().users @ items.T
    torch.testing.assert_close(scores, torch.tensor([[4.0, 1, 2], [1, 1, 1]]))
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 2])
    # score gaps 4 - 2 = 2 and 1 - 1 = 0; Frobenius norms of the batch's U, I, J: 2, sqrt(13), sqrt(10)
    bpr = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert model.loss(users, pos, neg).item() == pytest.approx(bpr + 0.5 * (2 + math.sqrt(13) + math.sqrt(10)) / 2)
    gaps = torch.tensor([2.0, 0.0], dtype=torch.float64)
    mmrec_bpr = -torch.log(1e-10 + torch.sigmoid(gaps)).mean().item()  # MMRec's BPRLoss
    assert bpr == pytest.approx(mmrec_bpr, abs=1e-9)
    model.reg_norm = "squared"  # the VBPR paper's penalty: sum of squares / (2B)
    assert model.loss(users, pos, neg).item() == pytest.approx(bpr + 0.5 * (4 + 13 + 10) / 4)


def mmrec_fac(i_emb_i, v_emb_i, t_emb_i, heads, ssl_temp):
    """MMRec's SLMRec.fac (enoche/MMRec src/models/slmrec.py), transcribed for the test."""
    criterion = torch.nn.CrossEntropyLoss()
    x_i_iv = heads["g_i_iv"](i_emb_i)
    x_v_iv = heads["g_v_iv"](v_emb_i)
    v_logits = torch.mm(x_i_iv, x_v_iv.T) / ssl_temp
    v_loss = criterion(v_logits, torch.tensor(list(range(x_i_iv.shape[0]))))
    x_iva_ivat = heads["g_iva_ivat"](heads["g_iv_iva"](x_i_iv))
    x_t_ivat = heads["g_t_ivat"](t_emb_i)
    t_logits = torch.mm(x_iva_ivat, x_t_ivat.T) / ssl_temp
    t_loss = criterion(t_logits, torch.tensor(list(range(x_iva_ivat.shape[0]))))
    return v_loss, t_loss


def test_slmrec_fac_matches_mmrec(data, dataset):
    seed_everything(0)
    table = make_table(dataset, d_text=6, d_image=4)
    model = build_model("slmrec", data, table, "id+features", dim=8)
    assert (model.n_layers, model.temperature, model.ssl_weight, model.ssl_temperature) == (3, 0.2, 1.0, 0.5)
    assert [(h.in_features, h.out_features) for h in model.fac.values()] == [(8, 8), (8, 8), (8, 8), (8, 4), (8, 4)]
    # content inputs: rows L2-normalised once, then one linear map
    text = model.content["text"]
    raw = torch.from_numpy(table.features[:, :6] * 3)
    torch.testing.assert_close(text.features, raw / raw.norm(dim=1, keepdim=True))
    torch.testing.assert_close(text(), text.features @ text.linear.weight.T + text.linear.bias)
    # FAC on a batch of positive items (a repeat included), from the unfused per-channel graph outputs
    users, items = torch.tensor([0, 3, 5, 3]), torch.tensor([2, 7, 7, 11])
    _, graph_items = model.propagate(model.channel_inputs())
    i_id, i_text, i_image = (g[items] for g in graph_items)
    v_loss, t_loss = mmrec_fac(i_id, i_image, i_text, model.fac, 0.5)
    fac = model.fac_loss({"id": i_id, "text": i_text, "image": i_image})
    torch.testing.assert_close(fac, v_loss + t_loss)
    # text or image alone: only that part's loss
    torch.testing.assert_close(model.fac_loss({"id": i_id, "text": i_text}), t_loss)
    torch.testing.assert_close(model.fac_loss({"id": i_id, "image": i_image}), v_loss)
    # total: in-batch InfoNCE of the fused user and item vectors + ssl_weight * FAC
    tables = model.tables()
    u = torch.nn.functional.normalize(tables.users[users], dim=1)
    i = torch.nn.functional.normalize(tables.items[items], dim=1)
    main = torch.nn.functional.cross_entropy(u @ i.T / 0.2, torch.arange(4))
    torch.testing.assert_close(model.loss(users, items), main + 1.0 * (v_loss + t_loss))
    # ID only (the Base row): nothing to align, the loss is InfoNCE alone
    base = build_model("slmrec", data, dim=8)
    assert len(base.fac) == 0
    tables = base.tables()
    u = torch.nn.functional.normalize(tables.users[users], dim=1)
    i = torch.nn.functional.normalize(tables.items[items], dim=1)
    alone = torch.nn.functional.cross_entropy(u @ i.T / 0.2, torch.arange(4))
    torch.testing.assert_close(base.loss(users, items), alone)


def test_models_bring_their_training_settings(dataset):
    assert model_train_config("slmrec").lr == 1e-4 and model_train_config("slmrec").weight_decay == 1e-4
    assert model_train_config("vbpr").monitor == "HR@20" and model_train_config("sasrec") == TrainConfig()
    mine = TrainConfig(lr=5e-3, epochs=1, batch_size=64, progress=False)
    assert model_train_config("slmrec", mine).lr == 5e-3  # a value the caller set stays
    assert model_train_config("slmrec", mine).weight_decay == 1e-4
    # a caller's own stopping rule is kept whole
    sampled = model_train_config("vbpr", TrainConfig(monitor_protocol="sampled"))
    assert (sampled.monitor, sampled.monitor_protocol) == ("NDCG@10", "sampled")
    run = run_experiment(dataset, "slmrec", train=replace(FAST, epochs=1), model_params={"dim": 8})
    assert run.config["train"]["lr"] == 1e-4 and run.config["train"]["monitor"] == "HR@20"
    plain = run_experiment(
        dataset, "slmrec", train=replace(FAST, epochs=1), model_params={"dim": 8}, model_defaults=False
    )
    assert plain.config["train"]["lr"] == 1e-3


def test_same_seed_same_result(dataset):
    runs = [run_experiment(dataset, "sasrec", seed=3, train=FAST) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0].metrics, runs[1].metrics)
    assert runs[0].per_user["full"]["rank"].tolist() == runs[1].per_user["full"]["rank"].tolist()
    other = run_experiment(dataset, "sasrec", seed=4, train=FAST)
    assert other.fit.history["loss"].tolist() != runs[0].fit.history["loss"].tolist()


def test_resumed_training_matches_uninterrupted(data, tmp_path):
    config = TrainConfig(epochs=3, batch_size=64, progress=False, patience=5)

    def model():
        seed_everything(config.seed)
        return build_model("sasrec", data)

    straight = fit(model(), data, config)
    fit(model(), data, TrainConfig(**{**config.__dict__, "epochs": 2}), checkpoint_dir=tmp_path)
    resumed = fit(model(), data, config, checkpoint_dir=tmp_path)
    pd.testing.assert_frame_equal(straight.history.drop(columns="seconds"), resumed.history.drop(columns="seconds"))
    assert (tmp_path / "best.pt").exists() and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="different configuration"):
        fit(model(), data, TrainConfig(**{**config.__dict__, "lr": 0.5}), checkpoint_dir=tmp_path)


def test_run_writes_results(dataset, tmp_path):
    run = run_experiment(dataset, "vbpr", train=FAST, out=tmp_path / "run")
    for name in ("config.json", "history.csv", "metrics.csv", "per_user_full.parquet", "per_user_sampled.parquet"):
        assert (tmp_path / "run" / name).exists()
    assert set(run.metrics["subset"]) == {"overall", "tail"}
    assert set(run.metrics["protocol"]) == {"full", "sampled"}
    assert len(run.per_user["full"]) == dataset.n_users


def test_feature_rows_must_match_items(dataset):
    with pytest.raises(FeatureError, match=f"has {dataset.n_items - 1} rows, the dataset has {dataset.n_items}"):
        run_experiment(dataset, "sasrec", make_table(dataset, rows=dataset.n_items - 1), train=FAST)


def test_feature_table_from_another_dataset(dataset, tmp_path):
    folder = make_table(dataset, name="beauty").save(tmp_path / "beauty-features")
    with pytest.raises(FeatureError, match="exported for dataset 'beauty', not 'toy-tiny'"):
        run_experiment(dataset, "sasrec", folder, train=FAST)


def test_nan_features(dataset):
    table = make_table(dataset)
    table.features[5, 2] = np.nan
    with pytest.raises(FeatureError, match="non-finite values in 1 rows, first item 5"):
        resolve_features(dataset, table)


def test_features_needed_for_feature_representation(dataset):
    with pytest.raises(ValueError, match="needs a feature table"):
        run_experiment(dataset, "sasrec", None, item_repr="features", train=FAST)


def test_empty_split(dataset):
    inter = dataset.interactions.copy()
    inter["split"] = inter["split"].astype(str).replace("valid", "train")
    broken = PreparedDataset(dataset.folder, dataset.card, dataset.items, inter, dataset.negatives)
    with pytest.raises(DataError, match="the 'valid' split is empty"):
        InteractionData.from_prepared(broken)


def test_train_grid_table_and_rerun(dataset, tmp_path):
    features = {"id": None, "random": make_table(dataset)}
    results, per_user = train_grid(dataset, ["sasrec"], features, seeds=[0], train=FAST, out=tmp_path)
    assert (tmp_path / "results.parquet").exists() and (tmp_path / "results.csv").exists()
    assert set(results["features"]) == {"id", "random"}
    assert set(results["item_repr"]) == {"id", "id+features"}
    table = table1(results, per_user=per_user)
    assert list(table.index.get_level_values("features")) == ["id", "random"]
    gain = table[("overall", "NDCG@10 gain")]
    assert gain.loc[("toy-tiny", "sasrec", "id")] == 0.0
    p = table.loc[("toy-tiny", "sasrec", "random"), ("tail", "HR@10 p")]
    assert 0 <= p <= 1 or np.isnan(p)
    # per-user results are keyed by named RunKeys, which are still plain 5-tuples
    assert list(per_user) == [
        RunKey("toy-tiny", "sasrec", "id", "id", 0),
        RunKey("toy-tiny", "sasrec", "random", "id+features", 0),
    ]
    key = list(per_user)[1]
    assert (key.features, key.item_repr, key.seed) == ("random", "id+features", 0) and key == tuple(key)
    assert set(per_user[key]) == {"full", "sampled"}
    # a second call reads the finished runs back instead of training again, under the same keys
    again, users_again = train_grid(dataset, ["sasrec"], features, seeds=[0], train=FAST, out=tmp_path)
    pd.testing.assert_frame_equal(results, again, check_dtype=False)
    assert list(users_again) == list(per_user) and all(type(k) is RunKey for k in users_again)
    assert all(type(k.seed) is int for k in users_again)
    pd.testing.assert_frame_equal(users_again[key]["full"], per_user[key]["full"], check_dtype=False)
    # a second grid over some of the same runs (05's Figure 3) keeps its own results file
    train_grid(dataset, ["sasrec"], {"id": None}, seeds=[0], train=FAST, out=tmp_path, results_name="part")
    assert set(pd.read_parquet(tmp_path / "results.parquet")["features"]) == {"id", "random"}
    assert set(pd.read_parquet(tmp_path / "part.parquet")["features"]) == {"id"}


def test_recbole_atomic_file(dataset, tmp_path):
    write_atomic_file(dataset, tmp_path / "x.inter")
    frame = pd.read_csv(tmp_path / "x.inter", sep="\t")
    assert list(frame.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(frame) == len(dataset.interactions)
    first = frame[frame["user_id:token"] == 0]
    assert first["timestamp:float"].tolist() == list(range(len(first)))
    assert first["item_id:token"].tolist() == dataset.sequences("test")[0].tolist()


def test_slmrec_graph_is_normalised_and_its_product_differentiates_like_dense():
    users, items = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    graph = _normalised_graph(users, items, 3, 3)
    dense = graph.to_dense()
    degree = np.array([2, 1, 1, 1, 2, 1], dtype=np.float32)  # users 0..2, then items 0..2
    assert dense[0, 3 + 1].item() == pytest.approx(1 / np.sqrt(degree[0] * degree[4]))
    torch.testing.assert_close(dense, dense.T)
    x = torch.randn(6, 4, requires_grad=True)
    _SymmetricProduct.apply(graph, x).pow(2).sum().backward()
    sparse_grad, x.grad = x.grad, None
    (dense @ x).pow(2).sum().backward()
    torch.testing.assert_close(sparse_grad, x.grad)


def test_feature_parts_must_add_up_to_the_table(data, dataset):
    table = make_table(dataset)
    table.manifest["dims"]["features_image"] = 7
    with pytest.raises(FeatureError, match="6 text \\+ 7 image columns, features.npy has 10"):
        build_model("vbpr", data, table, "id+features")


def test_feature_table_part_is_a_checked_view(dataset, tmp_path):
    table = make_table(dataset, d_text=6, d_image=4)
    text = table.part("text")
    np.testing.assert_array_equal(text.features, table.features[:, :6])
    assert text.image.shape == (dataset.n_items, 0) and text.text is table.text
    assert text.split_dims == (6, 0) and text.manifest["parts"] == ["text"]
    image = table.part("image")
    np.testing.assert_array_equal(image.features, table.features[:, 6:])
    assert image.split_dims == (0, 4) and image.text.shape[1] == 0
    assert table.part("image", "text").split_dims == (6, 4)  # column order stays text | image
    resolve_features(dataset, text)  # still checks against its dataset
    loaded = FeatureTable.load(text.save(tmp_path / "text-part"), dataset)
    np.testing.assert_array_equal(loaded.features, text.features)
    with pytest.raises(FeatureError, match="has no image part"):
        text.part("image")
    with pytest.raises(ValueError, match="part must be one of text, image, got 'audio'"):
        table.part("audio")
    # a part from another table of the same items (Figure 3's replacement), saved and checked too
    other = make_table(dataset, d_text=3, d_image=5)
    mixed = table.with_part("image", other)
    np.testing.assert_array_equal(mixed.features, np.concatenate([table.features[:, :6], other.features[:, 3:]], 1))
    assert mixed.split_dims == (6, 5) and mixed.image is other.image and mixed.text is table.text
    FeatureTable.load(mixed.save(tmp_path / "mixed"), dataset)
    settings = replacement_settings(table, other, dataset)
    assert list(settings) == ["sda-text+pretrained-image", "pretrained-text+sda-image", "sda"]
    assert settings["sda"] is table and settings["pretrained-text+sda-image"].split_dims == (3, 4)


def test_a_presets_item_repr_is_per_model(dataset):
    """The authors' preset replaces IDs by the table in SASRec only; SLMRec (whose task aligns the
    ID channel with the content) keeps its IDs, as in MMRec."""
    authors = get_preset("authors").item_repr
    results, _ = train_grid(dataset, ["sasrec", "slmrec"], {"t": make_table(dataset)}, item_repr=authors, train=FAST)
    assert dict(results.groupby("model")["item_repr"].first()) == {"sasrec": "features", "slmrec": "id+features"}
