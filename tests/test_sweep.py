"""Sweeps (sda_lib.workbench.sweep): points, the stages they share, resuming, failures, results."""

import json
import re

import nbformat
import pandas as pd
import pytest

from sda_lib.utils.paths import data_dir
from sda_lib.workbench import run as runner
from sda_lib.workbench import sweep

ALIKE = {"data.seed": 0, "zero_shot.seed": 0, "adapt.seed": 0, "export.seed": 0}  # the seed reaches 05 alone


def test_grid_values_and_combinations():
    grid = sweep.parse_grid(["adapt.steps=[50,100]", "seed=[0,1,2]", "backbone=['mini','mini:untrained']"])
    assert grid == {"adapt.steps": [50, 100], "seed": [0, 1, 2], "backbone": ["mini", "mini:untrained"]}
    points = sweep.combinations(grid)
    assert len(points) == 12 and points[0] == {"adapt.steps": 50, "seed": 0, "backbone": "mini"}
    assert points[1] == {"adapt.steps": 50, "seed": 0, "backbone": "mini:untrained"}  # the first key varies slowest
    # A list of grids: each combination of each, once.
    union = sweep.combinations([{"a": [1, 2], "b": [0]}, {"a": [1], "b": [0, 5]}])
    assert union == [{"a": 1, "b": 0}, {"a": 2, "b": 0}, {"a": 1, "b": 5}]
    for bad, message in (
        (["steps=5"], "non-empty list"),
        (["steps=[]"], "non-empty list"),
        (["steps=[1]", "steps=[2]"], "given twice"),
    ):
        with pytest.raises(sweep.SweepError, match=message):
            sweep.parse_grid(bad)


def test_points_share_exactly_the_stages_the_runner_would_compute_alike(outputs, tmp_path):
    s = sweep.Sweep("toy-tiny", {"recommend.epochs": [1, 2], "seed": [0, 1]}, ["recommend"], ALIKE, tmp_path / "s")
    assert s.stages == ["data", "zero_shot", "adapt", "export", "recommend"]  # and what recommend reads
    assert [p.grid for p in s.points][:2] == [{"recommend.epochs": 1, "seed": 0}, {"recommend.epochs": 1, "seed": 1}]
    first, *others = s.points
    assert all(p.params["seeds"] == [p.grid["seed"]] for p in s.points)  # the seed reaches 05's list of seeds
    for point in others:
        assert {k: v for k, v in point.keys.items() if k != "recommend"} == {
            k: v for k, v in first.keys.items() if k != "recommend"
        }
        assert point.root == first.root and point.waits_for == [first]
    assert len({p.keys["recommend"] for p in s.points}) == 4
    assert len({p.name for p in s.points}) == 4 and not first.waits_for

    # Without the scoped seeds, the seed reaches every stage that declares it: the catalogue too.
    s = sweep.Sweep("toy-tiny", {"seed": [0, 1]}, ["adapt"], out=tmp_path / "s2")
    a, b = s.points
    assert a.keys["data"] != b.keys["data"] and a.root != b.root and a.keys["adapt"] != b.keys["adapt"]
    assert "seeds" not in a.params  # no stage run takes a list of seeds
    # A data parameter gives each value an outputs root of its own; the code is part of every key.
    s = sweep.Sweep("toy-tiny", {"preferences": ["default", "shared"]}, ["data"], out=tmp_path / "s3")
    assert s.points[0].root != s.points[1].root


def test_a_bad_grid_is_refused_before_anything_runs(outputs, tmp_path, capsys):
    out = tmp_path / "s"
    assert sweep.main(["--dataset", "toy-tiny", "--out", str(out), "--grid", "nonexistent=[1,2]"]) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert sweep.main(["--dataset", "toy-tiny", "--out", str(out), "--grid", "adapt.steps=[1,'x']"]) == 2
    assert "expects int" in capsys.readouterr().err
    assert sweep.main(["--dataset", "toy-tiny", "--out", str(out), "--stages", "nope", "--grid", "seed=[0]"]) == 2
    assert not out.exists()


def _notebook(folder, filename, parameters, code):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(code),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / filename)


MAKE = """\
from pathlib import Path
from sda_lib.utils.paths import data_dir
Path(data_dir(dataset)).mkdir(parents=True, exist_ok=True)
(data_dir(dataset) / "made.txt").write_text(str(value))
"""
USE = """\
import time
from pathlib import Path
out = Path(out_dir)
(out / "use" / "cache").mkdir(parents=True, exist_ok=True)
(out / "use" / "cache" / "note.txt").write_text("kept")
(out / "use" / "result.txt").write_text(f"{time.time()} {label}")
(out / "tables").mkdir(exist_ok=True)
(out / "tables" / "92-used.csv").write_text("x\\n1\\n")
"""


@pytest.mark.slow
def test_a_copied_stage_is_current_for_the_runner_in_its_new_folder(outputs, tmp_path, monkeypatch, capsys):
    """copy_stage brings a finished stage, its report table, executed notebook and record into
    another run folder, where the runner skips it; other parameters still rerun it there."""
    folder = tmp_path / "nb"
    folder.mkdir()
    _notebook(folder, "91_make.ipynb", 'dataset = "x"\nout_dir = None\nvalue = 1', MAKE)
    _notebook(folder, "92_use.ipynb", 'dataset = "x"\nout_dir = None\nlabel = "a"', USE)
    monkeypatch.setattr(runner, "NOTEBOOKS", folder)
    monkeypatch.setattr(
        runner,
        "STAGES",
        {
            "make": runner.Stage("91_make.ipynb", outputs=lambda p: [data_dir(p["dataset"]) / "made.txt"]),
            "use": runner.Stage(
                "92_use.ipynb",
                reads=("make",),
                outputs=lambda p: ["use/result.txt"],
                resumes_from=lambda p: ["use/cache"],
            ),
        },
    )
    a, b = tmp_path / "a", tmp_path / "b"
    runner.run_stages("toy-tiny", out=a, progress=False)
    for stage in ("make", "use"):
        sweep.copy_stage(stage, a, b)
    assert (b / "use" / "result.txt").read_text() == (a / "use" / "result.txt").read_text()
    assert (b / "use" / "cache" / "note.txt").is_file() and (b / "tables" / "92-used.csv").is_file()
    assert (b / "92_use.ipynb").is_file()
    record = json.loads((b / "stages.json").read_text())
    assert record["use"]["params"]["out_dir"] == str(b)
    capsys.readouterr()
    runner.run_stages("toy-tiny", out=b, progress=False)
    assert re.findall(r"\] (\w+): running", capsys.readouterr().err) == [], "a copied stage ran again"
    assert (b / "use" / "result.txt").read_text() == (a / "use" / "result.txt").read_text()
    runner.run_stages("toy-tiny", out=b, params={"label": "b"}, progress=False)
    assert re.findall(r"\] (\w+): running", capsys.readouterr().err) == ["use"]
    assert (a / "use" / "result.txt").read_text().endswith(" a"), "a rerun in the copy changed the original"


@pytest.mark.slow
def test_sweep_on_toy_tiny_records_every_point_and_a_failure_and_resumes(outputs, tmp_path, capsys, monkeypatch):
    """Two values of one parameter and two seeds: epochs=0 fails in 05 (TrainConfig refuses it)."""
    version = sweep.code_version()  # an edit to the checkout while the test runs is not a new version
    monkeypatch.setattr(sweep, "code_version", lambda: version)
    out = tmp_path / "sweep"
    argv = ["--dataset", "toy-tiny", "--out", str(out), "--stages", "recommend", "--jobs", "2"]
    argv += ["--grid", "recommend.epochs=[1,0]", "--grid", "seed=[0,1]"]
    for key, value in {**ALIKE, "models": ["sasrec"], "features": ["id", "zero-shot", "sda"]}.items():
        argv += ["-p", f"{key}={value!r}"]
    argv += ["-p", "adapt.steps=2", "-p", "figure3=False"]
    assert sweep.main(argv) == 1  # a point failed
    assert "epochs must be a positive integer" in capsys.readouterr().err

    results = pd.read_csv(out / "results.csv")
    points = results.groupby("point")["state"].first()
    assert len(points) == 4 and sorted(points) == ["done", "done", "failed", "failed"]
    failed = results[results["state"] == "failed"]
    assert len(failed) == 2 and failed["error"].str.contains("epochs must be a positive integer").all()
    assert set(failed["recommend.epochs"]) == {0} and set(failed["seed"]) == {0, 1}
    done = results[(results["state"] == "done") & (results["metric"] == "HR@10")]
    assert set(done["features"]) == {"id", "zero-shot", "sda"} and set(done["seed"]) == {0, 1}
    assert (done["best_epoch"] <= done["epochs_cap"]).all() and set(done["epochs_cap"]) == {1}
    assert done["value"].between(0, 1).all()

    # The later points copied data .. export from the first: the same records, no second run.
    folders = sorted((out / "points").iterdir())
    records = [json.loads((f / "stages.json").read_text()) for f in folders]
    for stage in ("data", "zero_shot", "adapt", "export"):
        assert len({r[stage]["completed"] for r in records}) == 1, stage
    figure = json.loads(next((out / "figures").glob("00-*.json")).read_text())
    assert {t["name"] for t in figure["data"]} >= {"id", "zero-shot", "sda"}
    assert "Points of the sweep" in (out / "report.html").read_text()

    # A rerun runs nothing for the points that are done; the failed ones are tried again.
    logs = {f.name: (f / "runner.log").stat().st_mtime_ns for f in folders}
    assert sweep.main(argv) == 1
    capsys.readouterr()
    again = {f.name: (f / "runner.log").stat().st_mtime_ns for f in folders}
    unchanged = {n for n in logs if logs[n] == again[n]}
    assert unchanged == set(points[points == "done"].index)
    assert pd.read_csv(out / "results.csv").groupby("point")["state"].first().to_dict() == points.to_dict()


@pytest.mark.slow
def test_study_notebook_runs_headless_on_toy_tiny(outputs, tmp_path):
    """Notebook 09 on one condition and two seeds: the gain table with its paired statistics and best
    epochs, and the study's table and figure in the sweep's report."""
    import papermill as pm

    params = {
        "dataset": "toy-tiny",
        "study_seeds": [0, 1],
        "study_backbones": ["mini"],  # weights that do not depend on the seed, as the study needs
        "study_preferences": ["default"],
        "study_steps": [2],
        "study_losses": ["cmsa"],
        "study_models": ["sasrec"],
        "study_epochs": 2,
        "study_patience": 1,
        "study_jobs": 2,
    }
    pm.execute_notebook(
        str(runner.NOTEBOOKS / "09_when_sda_pays.ipynb"),
        str(tmp_path / "09.ipynb"),
        parameters=params,
        progress_bar=False,
    )
    folder = outputs / "toy-tiny" / "when-sda-pays"
    table = pd.read_csv(folder / "tables" / "09-sda-s-gain-over-zero-shot-features-per-condition-sampled-ranking.csv")
    assert (folder / "tables" / "09-sda-s-gain-over-zero-shot-features-per-condition-full-ranking.csv").is_file()
    assert len(table) == 4  # sasrec x overall, tail x HR@10, NDCG@10
    assert set(table["seeds above"]) <= {"0/2", "1/2", "2/2"} and table["p"].between(0, 1).all()
    overall = table[(table["subset"] == "overall") & (table["metric"] == "HR@10")].iloc[0]
    assert overall["gain"] == pytest.approx(overall["treatment"] / overall["control"] - 1)
    assert overall["low"] <= overall["gain"] <= overall["high"]
    assert re.fullmatch(r"[12], [12] of 2", overall["best epoch sda"])
    html = (folder / "report.html").read_text()
    assert "gain over zero-shot features per condition (sampled ranking)</h3>" in html and "Points of the sweep" in html
