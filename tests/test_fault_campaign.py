"""Hostile and careless input, second round: no code runs from a data file, nothing is deleted
that a name did not mean, no mixed data from a folder prepared again, and every refusal names
what was wrong. One test (or more) per case; each asserts the message and what is left on disk."""

import builtins
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sda_lib.data import DataError, PrepareParams, load_prepared, prepare_dataset
from sda_lib.data.__main__ import main as data_main
from sda_lib.method.backbones import load_backbone
from sda_lib.method.export import export_embeddings
from sda_lib.method.features import FeatureTable
from sda_lib.recsys import InteractionData, TrainConfig, build_model, fit
from sda_lib.recsys.train import seed_everything
from sda_lib.utils import exits
from sda_lib.utils.io import save_with_digest
from sda_lib.workbench.stage_scripts import adapt as adapt_main
from sda_lib.workbench.stage_scripts import export as export_main

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
        for unsafe in ("weights_only=" + "False", "allow_pickle=True", "pickle.load", "read_pickle", "joblib.load"):
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
    from sda_lib.workbench import run

    monkeypatch.setattr(run, "_run", lambda *a, **kw: pytest.fail("the stages started"))
    assert run.main(["--dataset", "toy-tiny", *given]) == 2
    assert message in capsys.readouterr().err
    assert not outputs.exists()


def test_the_runner_deletes_only_a_stage_s_own_folders(tmp_path):
    from sda_lib.workbench.run import STAGES, StageFailed, deletable, notebook_parameters

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
    code = f"import time\nfrom sda_lib.utils import locks\nwith locks.{context}:\n    print('held', flush=True)\n"
    return _start(code + f"    time.sleep({seconds})\n", outputs)


def test_a_dataset_being_read_is_not_prepared_again_and_a_reader_waits_for_a_writer(prepared, capsys, caplog):
    data = prepared / "toy-tiny" / "data"
    reader = _holding(f"reading({str(data)!r}, 'a test reader')", 120, prepared)
    try:
        assert data_main(["prepare", "toy-tiny", "--force", "--seed", "1"]) == exits.BUSY
        assert f"{data} is being read by another process" in capsys.readouterr().err
        assert data_main(["prepare", "toy-tiny"]) == 0  # up to date: reused beside the reader (another run)
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
    from sda_lib.method import export

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
    from sda_lib.method import backbones as backbone

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


# ---- your own data --------------------------------------------------------------------------------


def _shop(folder: Path, users: int = 8) -> Path:
    """A small custom source: `users` users with 4 interactions each over 8 items, each item with an image."""
    (folder / "img").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 90, 200)).save(folder / "img" / f"i{i}.png")
    pd.DataFrame({"item": [f"i{i}" for i in range(8)], "title": [f"thing {i}" for i in range(8)]}).assign(
        image_path=[f"img/i{i}.png" for i in range(8)]
    ).to_csv(folder / "items.csv", index=False)
    rows = [(f"u{u}", f"i{(u + k) % 8}", 1_400_000_000 + 60 * k) for u in range(users) for k in range(4)]
    pd.DataFrame(rows, columns=["user", "item", "timestamp"]).to_csv(folder / "interactions.csv", index=False)
    return folder


def test_a_name_is_a_name_even_beside_a_folder_of_that_name(outputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _shop(tmp_path / "mystore")  # the README's `--source mystore`, in the working directory
    assert data_main(["prepare", "custom", "--name", "mystore", "--source", "mystore"]) == 0
    assert load_prepared("mystore").folder == outputs / "mystore" / "data"
    assert load_prepared(outputs / "mystore" / "data").n_items == 8
    with pytest.raises(DataError, match=r"prepare it with `python -m sda_lib.data prepare custom --name other "):
        load_prepared("other")


def test_a_source_edited_while_it_is_prepared_is_noticed(outputs, tmp_path, monkeypatch):
    from sda_lib.data import custom

    source = _shop(tmp_path / "shop")
    real = custom.load_custom

    def edited_meanwhile(interactions, items, name):
        catalogue = real(interactions, items, name=name)
        with open(interactions, "a") as f:  # the user's export is still being written
            f.write("u99,i1,1400000000\nu99,i2,1400000060\nu99,i3,1400000120\n")
        return catalogue

    monkeypatch.setattr(custom, "load_custom", edited_meanwhile)
    with pytest.raises(DataError, match=r"interactions.csv changed while shop was being prepared from it"):
        prepare_dataset("shop", source, kind="custom")
    assert not (outputs / "shop" / "data").exists()
    monkeypatch.setattr(custom, "load_custom", real)
    assert load_prepared(prepare_dataset("shop", source, kind="custom")).n_users == 9


def test_a_bad_timestamp_is_named_at_its_row(tmp_path):
    from sda_lib.data.custom import _timestamps

    numbers = pd.Series([str(1_400_000_000 + i) for i in range(60)], dtype=object)
    numbers[43] = "yesterday"
    with pytest.raises(DataError, match=r"holds numbers, but data row 44 holds 'yesterday'"):
        _timestamps(numbers, tmp_path / "interactions.csv")
    dates = pd.Series(["2014-03-08"] * 60, dtype=object)
    dates[43] = "08/03/2014 10:00"
    with pytest.raises(DataError, match=r"first: data row 44, '08/03/2014 10:00'"):
        _timestamps(dates, tmp_path / "interactions.csv")


def test_a_deleted_source_is_named_with_a_fix_that_works(outputs, tmp_path, capsys):
    import shutil

    source = _shop(tmp_path / "shop")
    prepare_dataset("shop", source, kind="custom")
    shutil.move(source, tmp_path / "moved")
    with pytest.raises(DataError) as refused:
        load_prepared("shop")
    message = str(refused.value)
    assert f"prepared from the source folder {source}, which no longer exists" in message
    assert "A source folder must outlive the datasets prepared from it" in message
    fix = re.search(r"`python -m sda_lib.data (prepare .*?)`", message.split("no longer exists")[1]).group(1)
    argv = fix.replace("DIR", str(tmp_path / "moved")).split()
    assert data_main(argv) == 0, capsys.readouterr().err
    assert load_prepared("shop").n_items == 8


# ---- plugins ------------------------------------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path (and on the PYTHONPATH of child processes) for plugin modules, and a
    registry that imports plugins afresh."""
    from sda_lib.utils import registry

    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(registry, "_seen_env", None)
    return folder


@pytest.mark.parametrize("code", [0, 3])
def test_a_plugin_that_exits_while_imported_fails_the_command_naming_it(code, plugin_dir, monkeypatch, capsys):
    (plugin_dir / f"exits_{code}.py").write_text(f"import sys\nsys.exit({code})\n")
    monkeypatch.setenv("SDA_WORKBENCH_PLUGINS", f"exits_{code}")
    assert data_main(["prepare", "toy-tiny"]) == 1
    message = capsys.readouterr().err
    assert (
        f"the workbench plugin 'exits_{code}' (named in SDA_WORKBENCH_PLUGINS) exited (SystemExit({code}))" in message
    )
    assert "SDA_WORKBENCH_NO_PLUGINS=1 runs the workbench without plugins" in message


def test_a_broken_installed_plugin_names_its_package_and_can_be_skipped(plugin_dir, tmp_path):
    (plugin_dir / "broken_extension.py").write_text("raise RuntimeError('incompatible with this version')\n")
    dist = plugin_dir / "broken_shop-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-shop\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sda_workbench.plugins]\nshop = broken_extension\n")
    env = {**os.environ, "SDA_OUTPUTS": str(tmp_path / "outputs")}
    help_ = [sys.executable, "-m", "sda_lib.data", "prepare", "--help"]
    broken = subprocess.run(help_, cwd=REPO, env=env, capture_output=True, text=True)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "the workbench plugin 'broken_extension' (entry point 'shop' of broken-shop 1.0) failed" in broken.stderr
    assert "incompatible with this version" in broken.stderr and "pip uninstall broken-shop" in broken.stderr
    skipped = subprocess.run(
        help_, cwd=REPO, env={**env, "SDA_WORKBENCH_NO_PLUGINS": "1"}, capture_output=True, text=True
    )
    assert skipped.returncode == 0 and "usage: python -m sda_lib.data prepare" in skipped.stdout


def test_a_notebook_stopped_by_system_exit_is_not_done(tmp_path):
    import nbformat

    from sda_lib.workbench.run import unfinished

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1", execution_count=1),
        nbformat.v4.new_code_cell("import sys; sys.exit(0)"),
    ]
    nb.cells[1].execution_count = 2
    nb.cells[1].outputs = [nbformat.v4.new_output("error", ename="SystemExit", evalue="0", traceback=[])]
    nb.cells.append(nbformat.v4.new_code_cell("save_table(...)"))  # never ran
    nbformat.write(nb, tmp_path / "stopped.ipynb")
    assert unfinished(tmp_path / "stopped.ipynb", []) == (
        "its last cell never ran: the cell starting 'import sys; sys.exit(0)' stopped it (SystemExit)"
    )
    nb.cells[2].execution_count = 3
    nbformat.write(nb, tmp_path / "ran.ipynb")
    assert unfinished(tmp_path / "ran.ipynb", []) is None
    assert unfinished(tmp_path / "ran.ipynb", [tmp_path / "card.json"]) == f"it left no {tmp_path / 'card.json'}"


HALTING = """
import sys
from sda_lib.data import DATASETS, DatasetSource, Inputs

class Halting(DatasetSource):
    def inputs(self, name, source, recipe, **load_kw):
        return Inputs({}, generator={"halting": 1})

    def load(self, name, source, image_dir, seed, recipe, **load_kw):
        sys.exit(0)

DATASETS.register("halting", Halting())
"""


@pytest.mark.slow
def test_the_runner_does_not_record_a_stage_stopped_by_system_exit(plugin_dir, outputs, monkeypatch, capsys):
    from sda_lib.workbench.run import main as run_main

    (plugin_dir / "halting_dataset.py").write_text(HALTING)
    monkeypatch.setenv("SDA_WORKBENCH_PLUGINS", "halting_dataset")
    assert run_main(["--dataset", "halting", "--stages", "data"]) == 1
    err = capsys.readouterr().err
    assert "stage 'data' did not finish: its last cell never ran: the cell starting" in err
    assert "(SystemExit)" in err
    record = outputs / "halting" / "default" / "stages.json"
    assert not record.exists() or "data" not in json.loads(record.read_text())


# ---- lock files ---------------------------------------------------------------------------------


def test_a_planted_lock_link_is_refused_and_its_target_left_alone(tmp_path):
    from sda_lib.utils.locks import lock_file

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "data"
    lock_file(out).symlink_to(victim)
    with pytest.raises(OSError, match=rf"\.data\.lock, the lock file of {out}, is a symbolic link \(to {victim}\)"):
        prepare_dataset("toy-tiny", out=out)
    lock_file(out).unlink()
    os.link(victim, lock_file(out))  # a hard link writes through just the same
    with pytest.raises(OSError, match="is a file with more than one hard link"):
        prepare_dataset("toy-tiny", out=out)
    assert victim.read_text() == "precious\n" and not out.exists()


def test_a_lock_path_that_is_a_folder_is_named_as_such(tmp_path):
    from sda_lib.utils.locks import lock_file

    out = tmp_path / "data"
    lock_file(out).mkdir()
    with pytest.raises(OSError, match=rf"\.data\.lock, the lock file of {out}, is a folder: .* remove"):
        prepare_dataset("toy-tiny", out=out)


# ---- names, again: datasets and runs ------------------------------------------------------------


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("../../../x", "--dataset='../../../x' is not a plain folder name"),
        ("x" * 300, "--dataset is 300 characters long: a name has at most 100"),
        ("Toy-Tiny", "--dataset 'Toy-Tiny' differs only in case from 'toy-tiny', a registered dataset"),
        ("bench", "--dataset 'bench': outputs/bench/ is the workbench's own folder"),
    ],
)
def test_the_runner_refuses_a_bad_dataset_name_creating_nothing(dataset, message, tmp_path, monkeypatch, capsys):
    from sda_lib.workbench import run

    monkeypatch.setenv("SDA_OUTPUTS", str(tmp_path / "a" / "b" / "outputs"))
    monkeypatch.setattr(run, "_run", lambda *a, **kw: pytest.fail("the stages started"))
    assert run.main(["--dataset", dataset]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("Beauty", "dataset name 'Beauty' differs only in case from 'beauty', a registered dataset"),
        ("BENCH", "dataset name 'BENCH': outputs/bench/ is the workbench's own folder"),
        ("s" * 300, "dataset name is 300 characters long: a name has at most 100"),
    ],
)
def test_prepare_refuses_a_name_that_collides_or_is_too_long(name, message, outputs, tmp_path, capsys):
    source = _shop(tmp_path / "shop")
    assert data_main(["prepare", "custom", "--name", name, "--source", str(source)]) == 2
    assert message in capsys.readouterr().err
    assert not outputs.exists()


def test_a_name_that_differs_in_case_from_a_prepared_one_is_refused(outputs, tmp_path):
    prepare_dataset("MyShop", _shop(tmp_path / "shop"), kind="custom")
    with pytest.raises(DataError, match=r"'myshop' differs only in case from 'MyShop', a dataset folder in"):
        prepare_dataset("myshop", tmp_path / "shop", kind="custom")
    with pytest.raises(DataError, match="is 300 characters long"):
        load_prepared("s" * 300)


# ---- parameters papermill cannot pass --------------------------------------------------------------


@pytest.mark.parametrize(
    "given, what",
    [
        ("clip_model=('a', 'b')", "a tuple"),
        ("source={'a', 'b'}", "a set"),
        ("images=b'pics'", "a bytes"),
        ("explorer_tau=1j", "a complex"),
        ("epochs={1: 2}", "a dict key that is not text (1)"),
        ("seeds=[0, (1, 2)]", "a tuple"),
    ],
)
def test_values_papermill_cannot_pass_are_refused(given, what, outputs, monkeypatch, capsys):
    from sda_lib.workbench import run

    monkeypatch.setattr(run, "_run", lambda *a, **kw: pytest.fail("the stages started"))
    assert run.main(["--dataset", "toy-tiny", "-p", given]) == 2
    assert f"{what} cannot be passed to a notebook" in capsys.readouterr().err


# ---- adapters -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """The tiny backbone, loaded once; `fresh()` gives a copy of its bare model to load into."""
    backbone = load_backbone("tiny")
    backbone.fresh = lambda: copy.deepcopy(backbone.model)
    return backbone


def _saved_adapter(tiny, kind: str, folder: Path) -> Path:
    from sda_lib.method import adapters

    model = tiny.fresh()
    adapters.attach(model, kind, r=4, experts=2)
    return adapters.save(model, folder, tiny.id)


def _rewrite(path: Path, change) -> None:
    """Replace the tensors of a safetensors file by `change(tensors)`, its checksum recorded again (as
    whoever edits it can)."""
    from safetensors.torch import load_file, save_file

    save_with_digest(path, lambda tmp: save_file(change(load_file(str(path))), str(tmp)))


def test_a_damaged_moda_card_is_named(tiny, tmp_path):
    from sda_lib.method import adapters
    from sda_lib.method.moda import CONFIG_FILE

    folder = _saved_adapter(tiny, "moda", tmp_path / "a")
    card = json.loads((folder / CONFIG_FILE).read_text())
    for damage in ("{", json.dumps({**card, "config": {**card["config"], "bogus": 1}}), json.dumps([1])):
        (folder / CONFIG_FILE).write_text(damage)
        with pytest.raises(ValueError, match=rf"{folder / CONFIG_FILE} is not a MoDA adapter card that reads"):
            adapters.load(tiny.fresh(), folder, tiny.id)


def test_peft_adapters_carry_a_checksum_and_damaged_ones_are_named(tiny, tmp_path):
    from sda_lib.method import adapters

    folder = _saved_adapter(tiny, "lora", tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    original = weights.read_bytes()
    assert (folder / "adapter_model.safetensors.sha256").read_text().strip() == hashlib.sha256(original).hexdigest()
    flipped = bytearray(original)
    flipped[-3] ^= 0x10  # a bit of a weight
    weights.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=rf"{weights} does not match its checksum"):
        adapters.load(tiny.fresh(), folder, tiny.id)
    save_with_digest(weights, lambda tmp: tmp.write_bytes(b"\xff" * 64))  # a header that does not parse
    with pytest.raises(ValueError, match=rf"{weights} is not a safetensors file that reads"):
        adapters.load(tiny.fresh(), folder, tiny.id)
    weights.write_bytes(original)
    (folder / "adapter_model.safetensors.sha256").unlink()
    with pytest.raises(ValueError, match=rf"{weights} has no recorded checksum"):
        adapters.load(tiny.fresh(), folder, tiny.id)


def test_non_finite_peft_weights_are_refused(tiny, tmp_path):
    from sda_lib.method import adapters

    folder = _saved_adapter(tiny, "lora", tmp_path / "a")
    weights = folder / "adapter_model.safetensors"

    def with_nan(tensors):
        first = sorted(tensors)[0]
        tensors[first][0, 0] = float("nan")
        return tensors

    _rewrite(weights, with_nan)
    with pytest.raises(ValueError, match=rf"{weights} holds non-finite values \(NaN or inf\) in 1 tensors"):
        adapters.load(tiny.fresh(), folder, tiny.id)


def test_a_peft_config_that_does_not_fit_is_refused_before_allocating(tiny, tmp_path):
    from peft.tuners.lora import LoraLayer

    from sda_lib.method import adapters

    folder = _saved_adapter(tiny, "lora", tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 1_000_000}))
    model = tiny.fresh()
    with pytest.raises(ValueError, match=r"does not fit this backbone: its config \(r=1000000\) asks for .* of shape"):
        adapters.load(model, folder, tiny.id)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())  # nothing was injected, let alone allocated


# ---- file modes and where files land -------------------------------------------------------------


def test_outputs_follow_the_umask(tmp_path):
    before = os.umask(0o027)
    try:
        out = prepare_dataset("toy-tiny", out=tmp_path / "data")
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (out, out / "card.json", out / "items.parquet")}
    assert modes == {"data": 0o750, "card.json": 0o640, "items.parquet": 0o640}


def test_a_data_folder_that_is_a_link_is_written_through(outputs, tmp_path):
    elsewhere = tmp_path / "big-disk" / "toy-tiny-data"
    elsewhere.mkdir(parents=True)
    (outputs / "toy-tiny").mkdir(parents=True)
    link = outputs / "toy-tiny" / "data"
    link.symlink_to(elsewhere)
    for force in (False, True):
        prepare_dataset("toy-tiny", params=PrepareParams(seed=int(force)), force=force)
        assert link.is_symlink() and (elsewhere / "card.json").exists()
        assert load_prepared("toy-tiny").card["params"]["seed"] == int(force)
    assert sorted(p.name for p in (outputs / "toy-tiny").iterdir()) == ["data"]
