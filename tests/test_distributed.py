"""Two CPU processes (gloo, via accelerate's debug launcher) give the same step and the same export
as one process: the loss sees the global batch, and export shards merge in item order."""

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator, debug_launcher
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file

from sda_lib.data import load_prepared
from sda_lib.method import adapt, adapters
from sda_lib.method.adapt import AdaptConfig, AlignmentObjective, batch_items, local_share, pair_batch, train_adapter
from sda_lib.method.backbones import load_backbone
from sda_lib.method.export import export_embeddings
from sda_lib.method.features import FeatureTable

pytestmark = pytest.mark.slow
N_ITEMS = 8


def _fresh_accelerate_state():
    """Forked workers inherit the parent's (single-process) Accelerate singletons: drop them."""
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def _adapted_backbone(kind="moda", dropout=0.0):
    lvlm = load_backbone("tiny")
    torch.manual_seed(3)
    adapters.attach(lvlm.model, kind, dropout=dropout)
    with torch.no_grad():
        for p in lvlm.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return lvlm


def one_step(data_folder, out_file, gather=True, loss="cmsa", dropout=0.0):
    """The loss and the adapter gradients of the first training step, saved by the main process."""
    _fresh_accelerate_state()
    torch.set_num_threads(1)
    data = load_prepared(data_folder)
    lvlm = _adapted_backbone(dropout=dropout)
    config = AdaptConfig(batch_size=N_ITEMS, dropout=dropout, loss=loss)
    accelerator = Accelerator(cpu=True)
    objective = accelerator.prepare(AlignmentObjective(lvlm, config, gather=gather))
    items = local_share(batch_items(0, data.n_items, N_ITEMS, config.seed), accelerator)
    loss = objective(pair_batch(lvlm, data.item_fields(), data.image_paths(), items, config, 0))
    accelerator.backward(loss)
    plain = accelerator.unwrap_model(objective)
    grads = {n: p.grad.clone() for n, p in plain.named_parameters() if p.requires_grad}
    losses = accelerator.gather(loss.detach().reshape(1))
    if accelerator.is_main_process:
        torch.save({"loss": losses, "grads": grads, "processes": accelerator.num_processes}, out_file)


def export_adapted(data_folder, adapter_folder, out):
    _fresh_accelerate_state()
    torch.set_num_threads(1)
    export_embeddings(
        load_backbone("tiny"), load_prepared(data_folder), out, adapter=adapter_folder, chunk=16, progress=False
    )


@pytest.mark.parametrize("loss", ["cmsa", "infonce"])
def test_two_processes_give_the_one_process_step(toy_tiny, tmp_path, loss):
    one_step(toy_tiny.folder, tmp_path / "one.pt", loss=loss)
    debug_launcher(one_step, args=(toy_tiny.folder, tmp_path / "two.pt", True, loss), num_processes=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["processes"] == 1 and two["processes"] == 2
    # every process computed the loss of the whole global batch
    torch.testing.assert_close(two["loss"], one["loss"].expand(2), rtol=1e-5, atol=1e-6)
    assert one["grads"].keys() == two["grads"].keys()
    moved = 0
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=1e-7, msg=name)
        moved += bool(g.abs().sum() > 0)
    assert moved > len(one["grads"]) // 2, "most adapter tensors should receive gradient"


def test_two_processes_with_lean_per_expert_dropout_step_as_todays_path(toy_tiny, tmp_path, todays_moda_path):
    """With the authors' dropout (0.1, a mask per expert) under DDP: each process draws its masks
    from its own generator, and the lean path gives the step the per-expert path as it was gives."""
    debug_launcher(one_step, args=(toy_tiny.folder, tmp_path / "lean.pt", True, "cmsa", 0.1), num_processes=2)
    with todays_moda_path():
        debug_launcher(one_step, args=(toy_tiny.folder, tmp_path / "today.pt", True, "cmsa", 0.1), num_processes=2)
    lean, today = torch.load(tmp_path / "lean.pt"), torch.load(tmp_path / "today.pt")
    assert lean["processes"] == today["processes"] == 2
    torch.testing.assert_close(lean["loss"], today["loss"], rtol=1e-6, atol=1e-7)
    assert lean["grads"].keys() == today["grads"].keys()
    for name, g in today["grads"].items():
        torch.testing.assert_close(lean["grads"][name], g, rtol=1e-5, atol=1e-5 * float(g.abs().max()), msg=name)
    assert sum(bool(g.abs().sum() > 0) for g in lean["grads"].values()) > len(lean["grads"]) // 2


def test_per_process_loss_differs(toy_tiny, tmp_path):
    """With gather=False each process's loss sees only its own half of the items."""
    one_step(toy_tiny.folder, tmp_path / "one.pt")
    debug_launcher(one_step, args=(toy_tiny.folder, tmp_path / "two.pt", False), num_processes=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert not torch.allclose(two["loss"], one["loss"].expand(2), rtol=1e-3)


def test_two_process_export_equals_one_process(toy_tiny, tmp_path):
    lvlm = _adapted_backbone()
    adapters.save(lvlm.model, tmp_path / "adapter", lvlm.id)
    export_adapted(toy_tiny.folder, tmp_path / "adapter", tmp_path / "one")
    debug_launcher(export_adapted, args=(toy_tiny.folder, tmp_path / "adapter", tmp_path / "two"), num_processes=2)
    one, two = FeatureTable.load(tmp_path / "one", toy_tiny), FeatureTable.load(tmp_path / "two", toy_tiny)
    np.testing.assert_allclose(two.text, one.text, atol=1e-6)
    np.testing.assert_allclose(two.image, one.image, atol=1e-6)
    np.testing.assert_allclose(two.features, one.features, atol=1e-4)
    assert two.manifest["item_order"] == one.manifest["item_order"]
    assert not (tmp_path / "two.parts").exists()


def train_two_processes(data_folder, out, stop_at_call=None):
    """A short adaptation on every process; with `stop_at_call`, every process is interrupted when it
    builds that batch (after the checkpoint at step 2)."""
    _fresh_accelerate_state()
    torch.set_num_threads(1)
    if stop_at_call is not None:
        real, calls = adapt.pair_batch, []

        def interrupted(*args, **kw):
            calls.append(1)
            if len(calls) == stop_at_call:
                raise RuntimeError("interrupted")
            return real(*args, **kw)

        adapt.pair_batch = interrupted
    config = AdaptConfig(steps=4, batch_size=8, checkpoint_every=2, lr=1e-3)
    train_adapter(load_backbone("tiny"), load_prepared(data_folder), config, out, progress=False)


def test_two_process_resume_reaches_the_same_adapter(toy_tiny, tmp_path):
    debug_launcher(train_two_processes, args=(toy_tiny.folder, tmp_path / "full"), num_processes=2)
    with pytest.raises(Exception, match="interrupted"):  # the workers' error, re-raised by the launcher
        debug_launcher(train_two_processes, args=(toy_tiny.folder, tmp_path / "cut", 4), num_processes=2)
    assert not (tmp_path / "cut" / "adapter").exists()
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["checkpoint_0"]
    assert {p.name for p in (tmp_path / "cut" / "checkpoints" / "checkpoint_0").glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }, "each process keeps its own generators"
    debug_launcher(train_two_processes, args=(toy_tiny.folder, tmp_path / "cut"), num_processes=2)
    # the schedule steps once per step, not once per process: lr decays linearly from 1e-3 over 4 steps
    lrs = pd.read_csv(tmp_path / "full" / "loss.csv")["lr"].to_numpy()
    np.testing.assert_allclose(lrs, [7.5e-4, 5e-4, 2.5e-4, 0.0], atol=1e-12)
    full = load_file(str(tmp_path / "full" / "adapter" / "adapter.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "adapter" / "adapter.safetensors"))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
