"""The tracked notebooks and where their defaults come from; notebooks run by hand resolve their
profile as the runner does, stop at once without downloaded weights, and refuse tables of two
backbones; JupyterLab works on copies in the run folder."""

import ast
import inspect
import os
import subprocess
import sys
import time
from dataclasses import fields

import nbformat
import numpy as np
import pytest

from sda_lib.data import PrepareParams
from sda_lib.data.card import placeholder_note
from sda_lib.method.export import export_embeddings, feature_table
from sda_lib.method.features import FeatureError, check_comparable
from sda_lib.utils.params import parse_param
from sda_lib.workbench import lab, profiles
from sda_lib.workbench import run as runner

NOTEBOOK_FILES = sorted(runner.NOTEBOOKS.glob("*.ipynb"))
STAGE_OF = {spec.notebook: stage for stage, spec in runner.STAGES.items()}


def _parameters(nb) -> dict:
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(cell.source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


# ---------------------------------------------------------------- the tracked notebooks (CI check)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_tracked_notebook_is_clean_and_leaves_profile_settings_to_the_library(path):
    """No outputs or execution counts (JupyterLab's autosave would commit them); one parameters
    cell; every setting a profile decides is None there and the next cell resolves it with the
    library, so the runner, papermill and JupyterLab get one default, sda_lib.workbench.profiles'."""
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, cell.source[:60]
    params = _parameters(nb)
    assert params["dataset"] == "toy"
    following = nb.cells[tagged[0] + 1].source
    stage = STAGE_OF.get(path.name)
    if stage is None:  # the study notebook drives sweeps of the runner; it only reads lists given as text
        assert "literal_parameters(globals())" in following
        return
    assert f'resolve("{stage}", globals())' in following
    assert params["run"] == "default" and params["profile"] is None
    decided = profiles.QUICK.get(stage, {})
    assert {k: params[k] for k in decided} == {k: None for k in decided}, "a profile setting has a value here"
    # the runner reads the library's values for them (type checks, output paths)
    declared = runner.notebook_parameters(stage)
    assert {k: declared[k] for k in decided} == decided


def test_notebook_settings_equal_the_library_objects_they_feed():
    """Where a notebook parameter is a library setting, its default is the library's: 01's are
    PrepareParams' (recipe through the quick profile), 03's AdaptConfig's (steps & co through the
    quick profile), 02's and 04's export_embeddings'."""
    read = {p.name: _parameters(nbformat.read(p, as_version=4)) for p in NOTEBOOK_FILES}
    resolved = {
        name: {**params, **profiles.QUICK.get(STAGE_OF.get(name), {})}
        for name, params in read.items()
        if name in STAGE_OF
    }
    prepare = {f.name: f.default for f in fields(PrepareParams)}
    assert {k: resolved["01_data.ipynb"][k] for k in prepare} == prepare
    export = inspect.signature(export_embeddings).parameters
    for name in ("02_zero_shot.ipynb", "04_export.ipynb"):
        assert resolved[name]["d"] == export["d"].default
        assert resolved[name]["embed_batch_size"] == export["batch_size"].default
    assert resolved["04_export.ipynb"]["chunk"] == export["chunk"].default


# ---------------------------------------------------------------- one source of defaults


def test_resolve_fills_what_is_left_open_as_the_runner_does(capsys):
    namespace = {"dataset": "toy", "profile": None, "backbone": None, "steps": 7, "dropout_masks": None}
    profiles.resolve("adapt", namespace)
    assert namespace["profile"] == "teaching"
    assert (namespace["backbone"], namespace["steps"], namespace["dropout_masks"]) == ("mini", 7, "shared")
    assert "profile teaching (the default on toy)" in capsys.readouterr().out
    declared = {s: runner.notebook_parameters(s) for s in runner.STAGES}
    _, given = runner.profiled_parameters("toy", {"steps": 7}, list(runner.STAGES), declared)
    assert {k: given["adapt"][k] for k in profiles.QUICK["adapt"]} == {k: namespace[k] for k in profiles.QUICK["adapt"]}
    assert given["adapt"]["profile"] == "teaching"

    tiny = {"dataset": "toy-tiny", "profile": None, "backbone": None, "baselines": "[]", "clip_model": None}
    profiles.resolve("zero_shot", tiny)  # papermill passes -p baselines "[]" as text
    assert tiny["profile"] == "quick" and tiny["backbone"] == "tiny" and tiny["baselines"] == []
    text = {"dataset": "toy-tiny", "source": "[not a list", "models": "['sasrec']", "extra": "{'a': 1}"}
    profiles.literal_parameters(text)
    assert text == {"dataset": "toy-tiny", "source": "[not a list", "models": ["sasrec"], "extra": {"a": 1}}


def test_the_runner_reads_papermills_form_of_p_alike(monkeypatch):
    assert parse_param(["steps", "5"]) == ("steps", 5)
    assert parse_param(["baselines", "[]"]) == parse_param("baselines=[]") == ("baselines", [])
    assert parse_param(["adapt.loss", "infonce"]) == ("adapt.loss", "infonce")
    seen = {}
    monkeypatch.setattr(runner, "run_stages", lambda dataset, stages, out, run, params, *a, **k: seen.update(params))
    command = ["--dataset", "toy-tiny", "--jobs", "1", "-p", "baselines", "[]", "-p", "steps=5", "-p", "r", "4"]
    assert runner.main(command) == 0
    assert seen == {"baselines": [], "steps": 5, "r": 4}
    with pytest.raises(SystemExit) as bad:
        runner.main(["--dataset", "toy-tiny", "-p", "steps", "5", "6"])
    assert bad.value.code == 2


def test_a_hub_model_that_is_not_downloaded_stops_at_once(outputs, monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    namespace = {"dataset": "beauty", "profile": None, "backbone": None}
    with pytest.raises(profiles.MissingWeights) as missing:
        profiles.resolve("export", namespace)
    message = str(missing.value)
    assert "hf download Qwen/Qwen2.5-VL-7B-Instruct" in message and "-p backbone mini" in message
    assert "paper profile (the default on beauty)" in message
    profiles.resolve("export", {"dataset": "beauty", "profile": None, "backbone": "mini"})  # offline: fine
    # the runner refuses before any stage runs, naming the same command
    with pytest.raises(runner.UsageError, match="hf download openai/clip-vit-large-patch14"):
        runner.run_stages("beauty", ["zero_shot"], params={"backbone": "tiny"})


@pytest.mark.slow
def test_papermill_on_beauty_runs_the_paper_profile_and_stops_at_once(outputs, tmp_path):
    """`papermill 03 -p dataset beauty` resolves the paper profile (the 7B) and stops in its first
    cell without the weights; with -p backbone mini it goes on and stops at the unprepared data,
    naming the --source it needs."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    def papermill(*params):
        start = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "papermill",
            str(runner.NOTEBOOKS / "03_adapt.ipynb"),
            str(tmp_path / "o.ipynb"),
        ]
        result = subprocess.run(
            [*command, "-p", "dataset", "beauty", *params], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode != 0
        return result.stderr + result.stdout, time.perf_counter() - start

    text, seconds = papermill()
    assert "MissingWeights" in text and "hf download Qwen/Qwen2.5-VL-7B-Instruct" in text, text[-3000:]
    assert "-p backbone mini" in text and seconds < 60
    text, seconds = papermill("-p", "backbone", "mini", "-p", "steps", "5")
    assert "prepare beauty --source DIR" in text, text[-3000:]
    assert seconds < 60


# ---------------------------------------------------------------- tables of one backbone


def _table(toy_tiny, backbone, seed=0):
    rng = np.random.default_rng(seed)
    text, image = rng.normal(size=(2, toy_tiny.n_items, 8)).astype(np.float32)
    return feature_table(text, image, toy_tiny, d=4, extractor="lvlm", backbone=backbone)


def test_tables_of_two_backbones_are_refused_naming_both(toy_tiny, tmp_path):
    from sda_lib.recsys import train_grid

    zero_shot, sda = _table(toy_tiny, "tiny-random-seed0"), _table(toy_tiny, "mini-connector-abc", 1)
    pretrained = feature_table(sda.text, sda.image, toy_tiny, d=4, extractor="pretrained")
    check_comparable({"zero-shot": zero_shot.manifest, "pretrained": pretrained.manifest})  # no backbone: fine
    with pytest.raises(FeatureError, match="'tiny-random-seed0'.*'mini-connector-abc'"):
        check_comparable({"zero-shot": zero_shot.manifest, "sda": sda.manifest})
    sda.save(tmp_path / "sda")
    with pytest.raises(FeatureError, match="backbone"):  # 05 and 06 train through train_grid
        train_grid(toy_tiny, ["sasrec"], {"zero-shot": zero_shot, "sda": tmp_path / "sda"}, out=tmp_path / "r")
    assert not (tmp_path / "r").exists(), "a recommender trained before the refusal"
    with pytest.raises(FeatureError, match="holds no feature table"):  # a missing table: before the ID runs
        train_grid(toy_tiny, ["sasrec"], {"id": None, "pretrained": tmp_path / "none"}, out=tmp_path / "r")
    assert not (tmp_path / "r").exists(), "a recommender trained before the refusal"


def test_an_adapter_or_finished_variant_of_another_backbone_is_refused():
    from sda_lib.method.backbones import trained_on

    assert trained_on("tiny-random-seed0", "tiny", 0) and not trained_on("tiny-random-seed0", "tiny", 1)
    assert not trained_on("tiny-random-seed0", "mini") and trained_on("mini-connector-0123456789ab", "mini", 3)
    assert trained_on("Qwen/Qwen2.5-VL-7B-Instruct", "7b") and trained_on("7b-shaped:28-random-seed0", "7b-shaped")
    assert not trained_on("mini:untrained", "mini") and trained_on("mini:untrained", "mini:untrained")


@pytest.mark.slow
def test_alignment_notebook_refuses_zero_shot_and_adapted_tables_of_two_backbones(outputs, tmp_path):
    """An adapted table of the tiny preset, then 02 run again with the small one: 08 stops, naming both."""
    from sda_lib.data import load_prepared, prepare_dataset
    from sda_lib.method.backbones import load_backbone

    data = load_prepared(prepare_dataset("toy-tiny"))
    run = outputs / "toy-tiny" / "default"
    export_embeddings(load_backbone("tiny"), data, run / "embeddings" / "sda", progress=False)
    env = {**os.environ, "SDA_OUTPUTS": str(outputs)}
    for notebook, params in (
        ("02_zero_shot", ["-p", "backbone", "small", "-p", "baselines", "[]"]),
        ("08_alignment", []),
    ):
        command = [sys.executable, "-m", "papermill", str(runner.NOTEBOOKS / f"{notebook}.ipynb")]
        result = subprocess.run(
            [*command, str(tmp_path / f"{notebook}.ipynb"), "-p", "dataset", "toy-tiny", *params],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode != 0
    assert "FeatureError" in result.stderr and "'small-random-seed0'" in result.stderr, result.stderr[-3000:]
    assert "'tiny-random-seed0'" in result.stderr
    assert not (run / "tables").exists() or not list((run / "tables").glob("08-*")), "08 went on"


# ---------------------------------------------------------------- loud facts


def test_the_placeholder_share_is_in_the_card_and_said_loudly(toy_tiny):
    card = toy_tiny.card
    assert card["placeholder_share"] == pytest.approx(card["missing_images"] / card["items"])
    assert placeholder_note(card).startswith(f"{card['missing_images']} of {card['items']} items")
    everything = {**card, "missing_images": card["items"], "placeholder_share": 1.0}
    assert placeholder_note(everything).startswith("WARNING") and "--images DIR" in placeholder_note(everything)
    assert placeholder_note({**card, "missing_images": 0, "placeholder_share": 0.0}) is None


# ---------------------------------------------------------------- JupyterLab on copies


def test_lab_copies_the_notebooks_with_the_run_filled_in_and_keeps_edited_ones(outputs, monkeypatch, capsys):
    folder, copied, kept = lab.prepare_lab("toy", "explore", "quick")
    assert folder == outputs / "toy" / "explore" / "lab"
    assert copied == [p.name for p in NOTEBOOK_FILES] and kept == []
    for path in NOTEBOOK_FILES:
        mine, tracked = (_parameters(nbformat.read(p, as_version=4)) for p in (folder / path.name, path))
        filled = {"dataset": "toy", **({"run": "explore", "profile": "quick"} if "run" in tracked else {})}
        assert mine == {**tracked, **filled}, path.name
    cell = next(
        c
        for c in nbformat.read(folder / "03_adapt.ipynb", as_version=4).cells
        if "parameters" in c.metadata.get("tags", [])
    )
    assert "run = 'explore'  # the run folder" in cell.source  # the comment stays

    edited = folder / "03_adapt.ipynb"
    edited.write_text(edited.read_text().replace("steps = None", "steps = 3"))
    calls = []
    monkeypatch.setattr(lab.subprocess, "call", lambda command: calls.append(command) or 0)
    assert lab.main(["--dataset", "toy", "--run", "explore", "--no-browser", "--port", "8899"]) == 0
    assert "steps = 3" in edited.read_text()
    out = capsys.readouterr().out
    assert "kept as you left them" in out and "03_adapt.ipynb" in out
    assert calls and f"--notebook-dir={folder}" in calls[0] and "--no-browser" in calls[0] and "--port=8899" in calls[0]
    assert ("--allow-root" in calls[0]) == (os.geteuid() == 0)
    assert lab.main(["--dataset", "../x"]) == 2


@pytest.mark.slow
def test_an_executed_notebook_keeps_each_progress_bar_at_its_last_state(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("steps = 3", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(
                "from sda_lib.utils.frontend import tqdm\nprint('before')\n"
                "for _ in tqdm(range(steps), mininterval=0): pass"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "bar.ipynb")
    kernels = runner._kernel_manager({"SDA_WIDGETS": "static"})
    assert runner.execute(tmp_path / "bar.ipynb", tmp_path / "out.ipynb", {"steps": 4}, kernels, 120, False) is None
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[-1].outputs
    streams = {o["name"]: o["text"] for o in outputs if o["output_type"] == "stream"}
    assert len(outputs) == 2 and streams["stdout"] == "before\n"
    assert "4/4" in streams["stderr"] and "0/4" not in streams["stderr"], streams["stderr"]
