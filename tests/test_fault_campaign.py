"""Hostile and careless input, second round: no code runs from a data file, nothing is deleted
that a name did not mean, no mixed data from a folder prepared again, and every refusal names
what was wrong. One test (or more) per case; each asserts the message and what is left on disk."""

import builtins
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sda_lib import exits
from sda_lib.adapt import main as adapt_main
from sda_lib.backbone import load_backbone
from sda_lib.data import DataError, PrepareParams, load_prepared, prepare_dataset
from sda_lib.data.__main__ import main as data_main
from sda_lib.export import export_embeddings
from sda_lib.export import main as export_main
from sda_lib.features import FeatureTable
from sda_lib.io import save_with_digest
from sda_lib.recsys import InteractionData, TrainConfig, build_model, fit
from sda_lib.recsys.train import seed_everything

REPO = Path(__file__).resolve().parents[1]
SHORT = TrainConfig(epochs=2, batch_size=64, progress=False, patience=5)


@pytest.fixture(scope="module")
def interactions(toy_tiny):
    return InteractionData.from_prepared(toy_tiny)


def _sasrec(data):
    seed_everything(SHORT.seed)
    return build_model("sasrec", data)


# ---- no code from data files -------------------------------------------------------------------


class _Planted:
    """A pickle that writes a file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_planted_recommender_checkpoint_runs_no_code(interactions, tmp_path, caplog):
    marker = tmp_path / "ran"
    for name in ("last.pt", "previous.pt"):  # with its checksum, as whoever planted it can write one too
        save_with_digest(tmp_path / "ckpt" / name, lambda tmp: torch.save({"model": _Planted(marker)}, tmp))
    with caplog.at_level("WARNING", logger="sda_lib"):
        fit(_sasrec(interactions), interactions, SHORT, checkpoint_dir=tmp_path / "ckpt")
    assert not marker.exists()
    assert "last.pt does not load as tensors and JSON (UnpicklingError" in caplog.text
    assert "no intact checkpoint" in caplog.text


def test_recommender_checkpoint_without_its_checksum_is_not_resumed(interactions, tmp_path, caplog):
    fit(_sasrec(interactions), interactions, SHORT, checkpoint_dir=tmp_path)
    (tmp_path / "last.pt.sha256").unlink()
    with caplog.at_level("WARNING", logger="sda_lib"):
        longer = TrainConfig(**{**SHORT.__dict__, "epochs": 3})
        fit(_sasrec(interactions), interactions, longer, checkpoint_dir=tmp_path)
    assert "last.pt has no recorded checksum (last.pt.sha256 is missing): skipped, trying the one before" in caplog.text


def test_no_pickle_is_read_anywhere_in_the_package():
    """Everything a run folder holds is safetensors, JSON, parquet, npy/npz or weights_only torch."""
    found = []
    for path in sorted((REPO / "sda_lib").rglob("*.py")):
        text = path.read_text()
        for call in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group():
                found.append(f"{path.name}: {call.group()}")
        for unsafe in ("weights_only=False", "allow_pickle=True", "pickle.load", "read_pickle", "joblib.load"):
            if unsafe in text:
                found.append(f"{path.name}: {unsafe}")
    assert not found


# ---- names that become folders -----------------------------------------------------------------


@pytest.mark.parametrize(
    "given, message",
    [
        (["-p", "adapter_name="], "-p adapter_name is empty (an unset shell variable?)"),
        (["-p", "adapt.adapter_name="], "-p adapt.adapter_name is empty"),
        (["-p", "baselines=['pretrained', '../..']"], "-p baselines='../..' is not a plain folder name"),
        (["-p", "features=['id', '']"], "-p features is empty"),
        (["--run", "../elsewhere"], "--run='../elsewhere' is not a plain folder name"),
    ],
)
def test_names_that_become_folders_are_checked_before_anything_runs(given, message, outputs, monkeypatch, capsys):
    from sda_lib import run

    monkeypatch.setattr(run, "_run", lambda *a, **kw: pytest.fail("the stages started"))
    assert run.main(["--dataset", "toy-tiny", *given]) == 2
    assert message in capsys.readouterr().err
    assert not outputs.exists()


def test_the_runner_deletes_only_a_stage_s_own_folders(tmp_path):
    from sda_lib.run import STAGES, StageFailed, deletable, notebook_parameters

    out = tmp_path / "run"

    def full(**given):
        return {
            s: {**notebook_parameters(s), "dataset": "toy-tiny", "out_dir": str(out)}
            | {k: v for k, v in given.items() if k in notebook_parameters(s)}
            for s in STAGES
        }

    assert deletable("adapt", out, full()) == [out / "adapters" / "sda"]
    mine = [out / "embeddings" / "mine", out / "embeddings" / "mine.parts"]
    assert deletable("export", out, full(adapter_name="mine")) == mine
    for stage, given, why in [
        ("adapt", {"adapter_name": ""}, f"refusing to delete {out / 'adapters'} before rerunning stage 'adapt'"),
        ("export", {"adapter_name": ""}, f"{out / 'embeddings'} before rerunning stage 'export': it holds"),
        ("zero_shot", {"baselines": [""]}, f"{out / 'embeddings'} before rerunning stage 'zero_shot': it holds"),
        ("export", {"adapter_name": "zero-shot"}, "zero-shot before rerunning stage 'export': another stage"),
        ("adapt", {"adapter_name": ".."}, f"{out} before rerunning stage 'adapt': it is not a folder inside"),
    ]:
        with pytest.raises(StageFailed, match=re.escape(why)):
            deletable(stage, out, full(**given))


# ---- no mixed data: a dataset prepared again while (or after) it is read ------------------------

EXPORT = ["--dataset", "toy-tiny", "--adapter-name", "zero-shot", "--chunk", "40", "--d", "8"]


@pytest.fixture
def prepared(outputs):
    prepare_dataset("toy-tiny")
    return outputs


def _start(code: str, outputs: Path) -> subprocess.Popen:
    """A Python process running `code`, which prints 'held' once it holds what it takes."""
    env = {**os.environ, "SDA_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def _holding(context: str, seconds: float, outputs: Path) -> subprocess.Popen:
    code = f"import time\nfrom sda_lib import locks\nwith locks.{context}:\n    print('held', flush=True)\n"
    return _start(code + f"    time.sleep({seconds})\n", outputs)


def test_a_dataset_being_read_is_not_prepared_again_and_a_reader_waits_for_a_writer(prepared, capsys, caplog):
    data = prepared / "toy-tiny" / "data"
    reader = _holding(f"reading({str(data)!r}, 'a test reader')", 120, prepared)
    try:
        assert data_main(["prepare", "toy-tiny", "--force", "--seed", "1"]) == exits.BUSY
        assert f"{data} is being read by another process" in capsys.readouterr().err
    finally:
        reader.kill()
        reader.wait()
    assert load_prepared("toy-tiny").card["params"]["seed"] == 0
    writer = _holding(f"folder_lock({str(data)!r}, 'a test writer')", 1.5, prepared)
    with caplog.at_level("WARNING", logger="sda_lib"):
        assert load_prepared("toy-tiny").n_items == 80  # waited for the writer to finish
    writer.wait()
    assert f"waiting for {data}, which a test writer (process {writer.pid}" in caplog.text


def test_a_dataset_prepared_again_after_it_was_loaded_is_not_exported(prepared):
    stale = load_prepared("toy-tiny")
    prepare_dataset("toy-tiny", params=PrepareParams(seed=1), force=True)
    with pytest.raises(DataError, match=r"data was prepared again \(at .*\) after this dataset was loaded from it"):
        export_embeddings(load_backbone("tiny"), stale, prepared / "table")
    assert not (prepared / "table").exists()


def test_export_chunks_of_other_data_are_not_resumed(prepared, monkeypatch, caplog):
    from sda_lib import export

    real, calls = export.embed_items, []

    def stopped_after_one_chunk(*args, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(export, "embed_items", stopped_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        export_main(EXPORT)
    monkeypatch.setattr(export, "embed_items", real)
    parts = prepared / "toy-tiny" / "default" / "embeddings" / "zero-shot.parts"
    assert (parts / "00000000.npz").exists()
    prepare_dataset("toy-tiny", params=PrepareParams(seed=1), force=True)
    with caplog.at_level("WARNING", logger="sda_lib"):
        assert export_main(EXPORT) == 0
    assert f"discarding the finished chunks in {parts}: they were made with other data" in caplog.text
    resumed = FeatureTable.load(prepared / "toy-tiny" / "default" / "embeddings" / "zero-shot")
    straight = export_embeddings(load_backbone("tiny"), load_prepared("toy-tiny"), prepared / "straight", chunk=40, d=8)
    assert np.array_equal(resumed.text, straight.text) and np.array_equal(resumed.image, straight.image)


def test_adaptation_checkpoints_of_other_data_are_not_resumed(prepared, caplog):
    settings = ["--dataset", "toy-tiny", "-p", "steps=3", "-p", "batch_size=4", "-p", "checkpoint_every=2"]
    adapter = prepared / "toy-tiny" / "default" / "adapters" / "sda"
    assert adapt_main(settings) == 0
    assert (adapter / "checkpoints" / "checkpoint_0" / "state.json").exists()  # kept beside the adapter
    prepare_dataset("toy-tiny", params=PrepareParams(seed=1), force=True)
    with caplog.at_level("WARNING", logger="sda_lib"):
        assert adapt_main(settings) == 0
    assert "were made from other data (the dataset was prepared again since" in caplog.text
    assert json.loads((adapter / "adapt.json").read_text())["resumed_from_step"] == 0


# ---- a second writer is refused before the backbone is loaded -----------------------------------


@pytest.mark.parametrize(
    "main, folder",
    [
        (adapt_main, Path("toy-tiny/default/adapters/sda")),
        (export_main, Path("toy-tiny/default/embeddings/zero-shot")),
    ],
)
def test_a_held_folder_is_refused_before_the_backbone_loads(main, folder, prepared, monkeypatch, capsys):
    from sda_lib import backbone

    loaded = []
    monkeypatch.setattr(backbone, "load_backbone", lambda *a, **kw: loaded.append(1))
    holder = _holding(f"folder_lock({str(prepared / folder)!r}, 'a test holder')", 120, prepared)
    try:
        assert main(["--dataset", "toy-tiny", *(EXPORT[2:] if main is export_main else [])]) == exits.BUSY
    finally:
        holder.kill()
        holder.wait()
    assert "is in use by a test holder" in capsys.readouterr().err
    assert not loaded
