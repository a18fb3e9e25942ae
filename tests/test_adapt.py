"""The adaptation loop: deterministic batches, resume == uninterrupted, clear errors."""

import contextlib
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from sda_lib.data import DataError, load_prepared
from sda_lib.method import adapt, adapters, moda
from sda_lib.method.adapt import AdaptConfig, batch_items, text_view, train_adapter
from sda_lib.method.backbones import load_backbone
from sda_lib.method.cmsa import cmsa_loss
from sda_lib.workbench import stage_scripts

FAST = dict(steps=4, batch_size=8, checkpoint_every=2, lr=1e-3)


def test_batches_cover_each_item_once_per_epoch():
    batches = [batch_items(s, 50, 10, seed=3) for s in range(5)]
    assert sorted(np.concatenate(batches).tolist()) == list(range(50))
    assert np.array_equal(batch_items(7, 50, 10, seed=3), batch_items(7, 50, 10, seed=3))
    assert not np.array_equal(batch_items(5, 50, 10, seed=3), batch_items(0, 50, 10, seed=3))


def test_text_view_drops_and_shuffles():
    fields = {"title": "a", "brand": "b", "categories": "c", "description": "d", "price": "", "colour": "e"}
    rng = np.random.default_rng(0)
    views = [text_view(fields, rng, 0.4) for _ in range(20)]
    assert all(len(v) == 3 for v in views)  # 5 non-empty attributes, 40% dropped
    assert all(set(v) <= set(fields) - {"price"} for v in views)
    assert len({tuple(v) for v in views}) > 5  # order and choice vary
    assert text_view({"title": "x"}, rng, 0.9) == {"title": "x"}  # keeps at least one


def test_config_errors(toy_tiny, tmp_path):
    with pytest.raises(ValueError, match="loss must be one of cmsa, infonce, text-views, got 'mse'"):
        AdaptConfig(loss="mse")
    with pytest.raises(ValueError, match="dropout_masks must be one of per-expert, shared, got 'each'"):
        AdaptConfig(dropout_masks="each")
    with pytest.raises(ValueError, match=r"gradient_checkpointing must be True, False or None .*got 'auto'"):
        AdaptConfig(gradient_checkpointing="auto")
    with pytest.raises(ValueError, match="not divisible"):
        train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(r=6, experts=4), tmp_path)


def test_resume_reaches_the_same_adapter(toy_tiny, tmp_path, monkeypatch):
    full = train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**FAST), tmp_path / "full", progress=False)

    calls = {"n": 0}
    real = adapt.pair_batch

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4, after the checkpoint at step 2
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(adapt, "pair_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**FAST), tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "adapter").exists()
    monkeypatch.setattr(adapt, "pair_batch", real)
    loads, torch_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw) or torch_load(*a, **kw))
    resumed = train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**FAST), tmp_path / "cut", progress=False)

    assert resumed["resumed_from_step"] == 2
    assert all(kw.get("weights_only") is True for kw in loads), "a checkpoint file was unpickled"
    assert len(loads) >= 3  # optimizer, scheduler, random states
    a = load_file(str(tmp_path / "full" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming"
    assert resumed["final_tau"] == full["final_tau"]
    assert any(not torch.all(a[k] == 0) for k in a if "B" in k.split(".")[-1]), "B never moved"
    # checkpoints hold the trainable tensors only, never the frozen backbone
    saved = load_file(str(next((tmp_path / "cut" / "checkpoints").glob("checkpoint_*")) / "model.safetensors"))
    assert 0 < len(saved) == len(a) + 1  # the adapter's tensors and tau


def test_resume_with_other_settings_is_refused(toy_tiny, tmp_path, monkeypatch):
    real = adapt.pair_batch
    calls = {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(adapt, "pair_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**FAST), tmp_path, progress=False)
    monkeypatch.setattr(adapt, "pair_batch", real)
    with pytest.raises(ValueError, match="another run.*'lr'"):
        train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**{**FAST, "lr": 5e-4}), tmp_path, progress=False)


def _interrupt_at_call(monkeypatch, n):
    real, calls = adapt.pair_batch, {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(adapt, "pair_batch", interrupted)
    return real


def test_resume_on_another_dataset_is_refused(toy_tiny, tmp_path, monkeypatch):
    real = _interrupt_at_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**FAST), tmp_path, progress=False)
    monkeypatch.setattr(adapt, "pair_batch", real)
    other = dataclasses.replace(toy_tiny, card={**toy_tiny.card, "dataset": "toy-other"})
    with pytest.raises(ValueError, match=r"another run \(\{'dataset': \('toy-other', 'toy-tiny'\)"):
        train_adapter(load_backbone("tiny"), other, AdaptConfig(**FAST), tmp_path, progress=False)
    reordered = dataclasses.replace(toy_tiny, items=toy_tiny.items.iloc[::-1].reset_index(drop=True))
    with pytest.raises(ValueError, match="another run.*'item_order'"):
        train_adapter(load_backbone("tiny"), reordered, AdaptConfig(**FAST), tmp_path, progress=False)


def test_unwritable_output_fails_before_training(toy_tiny, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(adapt, "pair_batch", lambda *a, **kw: calls.append(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=f"cannot write in {blocker / 'run'}"):
        train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**FAST), blocker / "run", progress=False)
    assert not calls, "training started before the output folder was checked"
    with pytest.raises(OSError, match="cannot write in"):
        stage_scripts.adapt(["--dataset", str(toy_tiny.folder), "--out-dir", str(blocker / "run")])


@pytest.mark.parametrize("kind", ["moda", "lora", "independent"])
def test_gradient_checkpointing_gives_the_same_step(toy_tiny, tmp_path, kind):
    """Through the real loop: the loss and every adapter gradient of the second step (the first
    moves B off zero, so A and the gates get gradient too), with activation checkpointing on and
    off (dropout off, so the recomputation is exact)."""
    grads = {}

    def capture(optimizer, args, kwargs):
        grads[checkpointing] = [p.grad.clone() for group in optimizer.param_groups for p in group["params"]]

    handle = register_optimizer_step_pre_hook(capture)
    records = {}
    try:
        for checkpointing in (False, True):
            config = AdaptConfig(
                **{**FAST, "steps": 2, "adapter": kind, "dropout": 0.0, "gradient_checkpointing": checkpointing}
            )
            records[checkpointing] = train_adapter(
                load_backbone("tiny"), toy_tiny, config, tmp_path / str(checkpointing), progress=False
            )
    finally:
        handle.remove()
    assert records[True]["final_loss"] == pytest.approx(records[False]["final_loss"], rel=1e-6)
    assert len(grads[True]) == len(grads[False]) > 2
    for off, on in zip(grads[False], grads[True]):
        torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-8)
    assert all(g.abs().sum() > 0 for g in grads[True]), "every adapter tensor should get gradient"


def test_lean_per_expert_dropout_trains_as_todays_path(toy_tiny, tmp_path, todays_moda_path):
    """Through the real loop with the authors' dropout (0.1, a mask per expert): the loss and every
    adapter gradient of the second step are those of the per-expert path as it was, with
    activation checkpointing off and on (the recomputation replays the generator, so it redraws
    the same masks)."""
    grads, losses = {}, {}

    def capture(optimizer, args, kwargs):
        grads[run] = [p.grad.clone() for group in optimizer.param_groups for p in group["params"]]

    handle = register_optimizer_step_pre_hook(capture)
    try:
        for run in [(path, checkpointing) for path in ("lean", "today") for checkpointing in (False, True)]:
            path, checkpointing = run
            config = AdaptConfig(**{**FAST, "steps": 2, "gradient_checkpointing": checkpointing})
            assert config.dropout > 0 and config.dropout_masks == "per-expert"
            with todays_moda_path() if path == "today" else contextlib.nullcontext():
                record = train_adapter(
                    load_backbone("tiny"), toy_tiny, config, tmp_path / f"{path}-{checkpointing}", progress=False
                )
            losses[run] = record["final_loss"]
    finally:
        handle.remove()
    reference = ("today", False)
    for run in grads:
        assert losses[run] == pytest.approx(losses[reference], rel=1e-6), run
        for got, want in zip(grads[run], grads[reference], strict=True):
            # float32 sums in another order, through a step: equal to 1e-4 of the tensor's largest entry;
            # the temperature's gradient, one number, is a sum with cancellation, so it gets 1e-3
            scale = (1e-3 if want.numel() == 1 else 1e-4) * float(want.abs().max())
            torch.testing.assert_close(got, want, rtol=0, atol=scale, msg=lambda m, run=run: f"{run}: {m}")
    assert all(g.abs().sum() > 0 for g in grads["lean", True]), "every adapter tensor should get gradient"


def test_checkpointing_is_planned_from_the_step_estimate(toy_tiny):
    """gradient_checkpointing=None: the estimate holds the weights as they are and 16 bytes per
    trainable parameter, and saved activations that grow with the items at the run's longest rows,
    counted on a probe that leaves the generator where it was; checkpointing goes on just past
    CHECKPOINTING_HEADROOM of the memory."""
    backbone = load_backbone("tiny")
    adapters.attach(backbone.model, "moda")
    params = list(backbone.model.parameters())
    state = torch.random.get_rng_state()
    estimates = {n: adapt.estimate_step(backbone, toy_tiny, AdaptConfig(), items=n) for n in (4, 8)}
    assert torch.equal(torch.random.get_rng_state(), state)
    four, eight = estimates[4], estimates[8]
    assert four.held == eight.held == sum(p.numel() * (16 if p.requires_grad else 4) for p in params)
    assert eight.saved == pytest.approx(2 * four.saved) and eight.saved > 0
    texts = backbone.prompt_lengths(texts=toy_tiny.item_fields())
    assert eight.lengths[0] == texts.max() and eight.lengths[1] > 0
    limit = eight.total / adapt.CHECKPOINTING_HEADROOM
    needed, why = adapt.plan_checkpointing(eight, int(limit * 0.99))
    assert needed and why.startswith("gradient checkpointing on: a step of 8 items")
    assert adapt.plan_checkpointing(eight, int(limit * 1.01))[0] is False


def test_checkpointing_left_to_memory_is_off_on_cpu(toy_tiny, tmp_path):
    record = train_adapter(
        load_backbone("tiny"), toy_tiny, AdaptConfig(**{**FAST, "steps": 1}), tmp_path, progress=False
    )
    assert record["config"]["gradient_checkpointing"] is None and record["gradient_checkpointing"] is False
    assert record["checkpointing_estimate"] == "gradient checkpointing off: on CPU (the memory estimate is a GPU's)"


def test_nan_loss_names_the_step(toy_tiny, tmp_path, monkeypatch):
    real = adapt.cmsa_loss
    calls = {"n": 0}

    def poisoned(e_t, e_v, tau, *args, **kw):
        calls["n"] += 1
        return real(e_t, e_v, tau * float("nan") if calls["n"] == 2 else tau, *args, **kw)

    monkeypatch.setattr(adapt, "cmsa_loss", poisoned)
    with pytest.raises(FloatingPointError, match="step 1: CMSA loss is nan"):
        train_adapter(load_backbone("tiny"), toy_tiny, AdaptConfig(**FAST), tmp_path, progress=False)


def test_dataset_not_prepared(outputs):
    with pytest.raises(DataError, match="prepare it with `python -m sda_lib.data prepare beauty --source DIR`"):
        load_prepared("beauty")


@pytest.mark.parametrize("kind,loss", [("lora", "infonce"), ("independent", "text-views")])
def test_variants_train(toy_tiny, tmp_path, kind, loss):
    record = train_adapter(
        load_backbone("tiny"),
        toy_tiny,
        AdaptConfig(**{**FAST, "adapter": kind, "loss": loss}),
        tmp_path,
        progress=False,
    )
    assert np.isfinite(record["final_loss"]) and (tmp_path / "adapter").is_dir()


def test_the_two_halves_give_the_mixed_batch_loss(toy_tiny):
    """Each modality's rows run as their own forward, padded to their own longest row; the loss
    equals the loss of one right-padded mixed batch routed row by row (padding changes nothing)."""
    lvlm = load_backbone("tiny")
    adapters.attach(lvlm.model, "moda", dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lvlm.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # B starts at 0: make the routing count
    config = AdaptConfig(batch_size=6)
    objective = adapt.AlignmentObjective(lvlm, config, gather=False)
    items = batch_items(0, toy_tiny.n_items, 6, 0)
    halves = adapt.pair_batch(lvlm, toy_tiny.item_fields(), toy_tiny.image_paths(), items, config, 0)
    assert [m for _, m in halves] == [moda.TEXT, moda.IMAGE]
    text, image = (inputs["attention_mask"] for inputs, _ in halves)
    assert text.shape[1] != image.shape[1]  # so the halves pad differently from a mixed batch

    fields, paths = toy_tiny.item_fields(), toy_tiny.image_paths()
    mixed = lvlm.inputs(texts=[fields[i] for i in items], images=[adapt.load_image(paths[i]) for i in items])
    with torch.no_grad(), adapters.modality(lvlm.model, [moda.TEXT] * 6 + [moda.IMAGE] * 6):
        e = lvlm.encoder(**mixed)
        expected = cmsa_loss(e[:6], e[6:], objective.temperature(), config.cmsa_form)
        assert torch.allclose(objective(halves), expected, atol=1e-5)


def test_dropout_masks_setting_reaches_the_moda_layers(toy_tiny, tmp_path):
    lvlm = load_backbone("tiny")
    config = AdaptConfig(**{**FAST, "steps": 1}, dropout_masks="shared")
    record = train_adapter(lvlm, toy_tiny, config, tmp_path, progress=False)
    layers = moda.moda_layers(lvlm.model).values()
    assert layers and not any(layer.per_expert_masks for layer in layers)
    assert record["config"]["dropout_masks"] == "shared"
