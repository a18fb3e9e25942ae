"""The stage runner: executes notebooks with papermill, skips completed stages, names failures."""

import json

import nbformat
import pytest

from sda_lib import run as runner
from sda_lib.data import load_prepared
from sda_lib.report import report_numbers

pytestmark = pytest.mark.slow


def test_data_stage_on_toy_tiny(outputs):
    out = runner.run_stages("toy-tiny", ["data"], progress=False)
    assert out == outputs / "toy-tiny" / "default"
    executed = nbformat.read(out / "01_data.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    data = load_prepared("toy-tiny")
    assert f"users         {data.n_users:,}" in text
    record = json.loads((out / "stages.json").read_text())
    assert record["data"]["params"]["dataset"] == "toy-tiny"

    before = (out / "01_data.ipynb").stat().st_mtime_ns
    runner.run_stages("toy-tiny", ["data"], progress=False)
    assert (out / "01_data.ipynb").stat().st_mtime_ns == before, "an up-to-date stage ran again"

    runner.run_stages("toy-tiny", ["data"], params={"n_negatives": 20}, progress=False)
    assert (out / "01_data.ipynb").stat().st_mtime_ns != before, "changed parameters did not rerun"
    assert load_prepared("toy-tiny").negatives.shape[1] == 20


SMALL = {"steps": 20, "epochs": 3, "conflict_steps": 10}


def test_whole_runner_on_toy_tiny_builds_the_report(outputs):
    """Every stage on toy-tiny, then the report holds every table and figure with finite numbers."""
    out = runner.run_stages("toy-tiny", params=SMALL, progress=False)
    for notebook in runner.STAGES.values():
        executed = nbformat.read(out / notebook, as_version=4)
        errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{notebook}: {errors[:1]}"
    numbers = report_numbers(out / "report.html")
    assert numbers["non_finite"] == 0
    assert numbers["tables"] >= 9 and numbers["figures"] >= 9, numbers
    html = (out / "report.html").read_text()
    for section in ("Data card", "Recommendation sampled ranking", "Ablations", "Gradient conflict",
                    "Alignment", "Umap", "Parameters", "Software", "Executed notebooks"):
        assert section.lower() in html.lower(), f"report lacks {section!r}"
    assert all(f'href="{nb}"' in html for nb in runner.STAGES.values())


def test_failure_names_notebook_and_cell(outputs, tmp_path, monkeypatch):
    broken = tmp_path / "nb"
    broken.mkdir()
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("dataset = 'x'\nout_dir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("1 / 0"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, broken / "99_broken.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOKS", broken)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(runner, "STAGES", {"broken": "99_broken.ipynb"})
    with pytest.raises(runner.StageFailed, match=r"stage 'broken' failed in nb/99_broken.ipynb, in the cell starting '1 / 0' .*ZeroDivisionError"):
        runner.run_stages("toy-tiny", progress=False)
    assert not (outputs / "toy-tiny" / "default" / "stages.json").exists()


def test_cli_rejects_unknown_parameter(outputs):
    with pytest.raises(SystemExit, match="declared by none"):
        runner.main(["--dataset", "toy-tiny", "-p", "no_such_knob=3"])


def test_parse_param():
    assert runner.parse_param("r=8") == ("r", 8)
    assert runner.parse_param("tau=0.5") == ("tau", 0.5)
    assert runner.parse_param("source=/data/beauty") == ("source", "/data/beauty")
    assert runner.parse_param("force=True") == ("force", True)
