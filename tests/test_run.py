"""The stage runner: executes notebooks with papermill, skips current stages, names failures."""

import ast
import concurrent.futures
import html
import json
import os
import re
import time
from dataclasses import fields

import nbformat
import pandas as pd
import pytest
from huggingface_hub import ModelCard

from sda_lib.data import load_prepared
from sda_lib.method.adapt import AdaptConfig
from sda_lib.recsys import published
from sda_lib.utils.params import parse_param
from sda_lib.utils.paths import REPO_ROOT, data_dir
from sda_lib.workbench import profiles, report
from sda_lib.workbench import run as runner
from sda_lib.workbench.report import report_numbers

NOTEBOOK_FILES = sorted(runner.NOTEBOOKS.glob("*.ipynb"))


def _write_notebook(folder, filename, parameters, code):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(code),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / filename)


def _ran(capsys) -> list[str]:
    """The stages a run executed, from its progress lines."""
    return re.findall(r"\] (\w+): running", capsys.readouterr().err)


# ---------------------------------------------------------------- the real stages, on toy-tiny


@pytest.fixture
def library_as_now(monkeypatch):
    """The library version as at the test's start, so that an edit to sda_lib made while the test
    runs (a colleague's, in a shared checkout) does not rerun the stages it expects skipped."""
    version = runner.library_version()
    monkeypatch.setattr(runner, "library_version", lambda: version)


@pytest.mark.slow
def test_data_stage_on_toy_tiny(outputs, library_as_now):
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


@pytest.mark.slow
def test_whole_runner_on_toy_tiny_builds_the_report(toy_tiny_run, monkeypatch, capsys):
    """Every stage on toy-tiny, then the report holds every table and figure with finite numbers,
    each under its heading in words, and opens with a verdict on every mechanism the run measured."""
    out = toy_tiny_run.folder
    for stage in runner.STAGES.values():
        executed = nbformat.read(out / stage.notebook, as_version=4)
        errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{stage.notebook}: {errors[:1]}"
    numbers = report_numbers(out / "report.html")
    assert numbers["non_finite"] == 0
    assert numbers["tables"] >= 9 and numbers["figures"] >= 9, numbers
    page = html.unescape((out / "report.html").read_text())
    for section in (
        "What this run shows",
        "Data card",
        "Hit@10 and NDCG@10 per model and features (sampled ranking)",
        "SDA's mean gain over CLIP, as the abstract reports it",
        "SLMRec on Base, SDA text, SDA image and both",
        "SDA without each component (sasrec, sampled ranking)",
        "Gradient cosine while the sda adapter trained",
        "Gradient cosine per projection, beside section 3.3.3",
        "Gradient conflict between the modalities",
        "Every item's text and image, before and after adaptation",
        "Map of the items (UMAP), coloured by long-tail membership",
        "Parameters",
        "Software",
        "Executed notebooks",
    ):
        assert f">{section}</h" in page, f"report lacks {section!r}"
    for saved in [*out.glob("tables/*.csv"), *out.glob("figures/*.json")]:
        assert report.heading_of(saved.stem)[2] < len(report.HEADINGS), f"{saved.name} has no heading in words"
    findings = {json.loads(p.read_text())["mechanism"] for p in out.glob("findings/*.json")}
    assert findings == set(report.MECHANISMS), findings  # toy-tiny's run measures all five
    assert "not measured" not in page
    assert all(f'href="{stage.notebook}"' in page for stage in runner.STAGES.values())
    # the adapter's hub card carries the figures the run measured with it
    card = ModelCard.load(out / "adapters" / "sda" / "adapter" / "README.md")
    assert {r.task_type for r in card.data.eval_results} == {"item-embedding-alignment", "recommendation"}

    # The output table names what the notebooks really write: every declared output was fingerprinted.
    record = json.loads((out / "stages.json").read_text())
    for name in runner.STAGES:
        fingerprints = record[name]["outputs"]
        assert fingerprints and all(fingerprints.values()), (name, fingerprints)
    monkeypatch.setenv("SDA_OUTPUTS", str(toy_tiny_run.outputs))
    monkeypatch.setattr(runner, "library_version", lambda: toy_tiny_run.library_version)
    capsys.readouterr()
    runner.run_stages("toy-tiny", params=toy_tiny_run.params, progress=False)
    assert _ran(capsys) == [], "a second run with nothing changed reran stages"


@pytest.mark.slow
def test_paper_profile_offline_renders_the_papers_table1_rows_figure3_and_gradient_table(outputs, library_as_now):
    """The paper profile on toy-tiny with the random presets in place of the two downloads: Table 1
    has Base / CLIP / zero-shot / SDA rows named after what ran, the CLIP row from the tiny random
    CLIP; Figure 3 is the modality replacement; the gradient study is per projection. Toy data has
    nothing published to compare with, and the report says so."""
    params = {
        "profile": "paper",
        "backbone": "tiny",
        "clip_model": "tiny",
        "data.recipe": "5core",
        "adapt.steps": 2,
        "epochs": 1,
        "models": ["sasrec", "slmrec"],
        "conflict_steps": 2,
        "every": 1,
    }
    stages = ["data", "zero_shot", "adapt", "export", "recommend", "gradient_conflict"]
    out = runner.run_stages("toy-tiny", stages, run="paper", params=params, progress=False)
    table1 = pd.read_csv(out / "tables" / "05-table-1-sampled-ranking.csv")
    sasrec = table1[table1["model"] == "SASRec"]["row"].tolist()
    assert sasrec[:5] == ["Base", "CLIP (tiny)", "zero-shot (tiny)", "SDA (tiny)", "Improv."]
    assert sasrec[-1] == "MiniLM + EfficientNet-Lite0 (not in the paper)"
    assert "No published column: toy-tiny" in table1["note"].iloc[0]
    manifest = json.loads((out / "embeddings" / "clip" / "manifest.json").read_text())
    assert manifest["model"] == "clip:tiny-random-seed0"
    runs = json.loads((out / "recsys" / "slmrec" / "pretrained" / "seed0" / "config.json").read_text())
    assert runs["train"]["monitor"] == "HR@10" and runs["train"]["monitor_protocol"] == "sampled"  # the fork's
    bars = pd.read_csv(out / "tables" / "05-figure-3-slmrec-modality-replacement.csv")
    assert bars["bar"].unique().tolist() == [
        "Base",
        "SDA text + Base image",
        "Base text + SDA image",
        "SDA text + image",
    ]
    assert set(bars["subset"]) == {"overall", "tail"}
    gradients = pd.read_csv(out / "tables" / "07-gradient-conflict-per-projection-section-3-3-3.csv")
    assert gradients[["projection", "adapter"]].values.tolist()[:4] == [
        ["q_proj", "lora"],
        ["q_proj", "moda"],
        ["k_proj", "lora"],
        ["k_proj", "moda"],
    ]
    assert json.loads((out / "stages.json").read_text())["gradient_conflict"]["params"]["conflict_mode"] == "train"
    page = html.unescape((out / "report.html").read_text())
    assert ">SLMRec on Base, SDA text, SDA image and both</h3>" in page
    assert report_numbers(out / "report.html")["non_finite"] == 0


# ---------------------------------------------------------------- currency, on two tiny stages

MAKE = """\
import json
from sda_lib.utils.paths import REPO_ROOT, data_dir
card = data_dir(dataset) / "made.json"
card.parent.mkdir(parents=True, exist_ok=True)
card.write_text(json.dumps({"value": value}))
"""

USE = """\
import json, os
from pathlib import Path
from sda_lib.utils.paths import REPO_ROOT, data_dir
out = Path(out_dir)
cache = out / "use" / "cache" / f"{label}.json"  # read back when present, like a finished recommender run
if not cache.exists():
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text((data_dir(dataset) / "made.json").read_text())
result = {"value": json.loads(cache.read_text())["value"], "label": label,
          "threads": os.environ.get("OMP_NUM_THREADS"), "cwd": os.getcwd()}
(out / "use" / "result.json").write_text(json.dumps(result))
(out / "tables").mkdir(exist_ok=True)
(out / "tables" / f"92-{label}.csv").write_text("x\\n1\\n")
"""


@pytest.fixture
def two_stages(outputs, tmp_path, monkeypatch):
    """`make` writes a data file (standing for the data card) from `value`; `use` reads it (through a
    cache it reads back, as the recommender grid does) into use/result.json. The library is a
    one-file folder of its own."""
    folder = tmp_path / "nb"
    folder.mkdir()
    _write_notebook(folder, "91_make.ipynb", 'dataset = "x"\nout_dir = None\nvalue = 1', MAKE)
    _write_notebook(folder, "92_use.ipynb", 'dataset = "x"\nout_dir = None\nlabel = "a"', USE)
    library = tmp_path / "lib"
    library.mkdir()
    (library / "code.py").write_text("x = 1\n")
    monkeypatch.setattr(runner, "NOTEBOOKS", folder)
    monkeypatch.setattr(runner, "LIBRARY", library)
    monkeypatch.setattr(
        runner,
        "STAGES",
        {
            "make": runner.Stage("91_make.ipynb", outputs=lambda p: [data_dir(p["dataset"]) / "made.json"]),
            "use": runner.Stage(
                "92_use.ipynb",
                reads=("make",),
                outputs=lambda p: ["use/result.json"],
                resumes_from=lambda p: ["use/cache"],
                grows=("label",),
            ),
        },
    )
    return outputs / "toy-tiny" / "default"


def _result(out):
    return json.loads((out / "use" / "result.json").read_text())


@pytest.mark.slow
def test_stage_reruns_when_an_earlier_stage_changed_what_it_reads(two_stages, capsys):
    """Issue 10 item 6: data re-prepared with another seed, then the later stages were all skipped."""
    out = two_stages
    runner.run_stages("toy-tiny", progress=False)
    assert _ran(capsys) == ["make", "use"] and _result(out)["value"] == 1

    runner.run_stages("toy-tiny", ["make"], params={"value": 2}, progress=False)  # re-prepare the data only
    assert _ran(capsys) == ["make"]
    runner.run_stages("toy-tiny", ["use"], progress=False)
    assert _ran(capsys) == ["use"], "the data changed under a stage reported up to date"
    assert _result(out)["value"] == 2, "the rerun read back what it had computed from the old data"

    runner.run_stages("toy-tiny", progress=False)  # the run's own parameters again: value 1
    assert _ran(capsys) == ["make", "use"] and _result(out)["value"] == 1
    runner.run_stages("toy-tiny", progress=False)
    assert _ran(capsys) == []


@pytest.mark.slow
def test_stage_reruns_when_its_outputs_vanished_or_changed(two_stages, capsys):
    out = two_stages
    runner.run_stages("toy-tiny", progress=False)
    capsys.readouterr()
    (out / "use" / "result.json").unlink()
    runner.run_stages("toy-tiny", progress=False)
    assert _ran(capsys) == ["use"] and (out / "use" / "result.json").exists()

    (data_dir("toy-tiny") / "made.json").write_text('{"value": 7}')  # edited behind the runner's back
    runner.run_stages("toy-tiny", progress=False)
    # make restores the file byte for byte, so what use read is unchanged and use stays current
    assert _ran(capsys) == ["make"] and _result(out)["value"] == 1


@pytest.mark.slow
def test_growth_parameter_keeps_finished_work_and_report_files_are_replaced(two_stages, capsys):
    """A parameter that only adds settings (05's features, 06's variants) reads finished work back;
    the stage's report tables are those of its last run only."""
    out = two_stages
    runner.run_stages("toy-tiny", progress=False)
    runner.run_stages("toy-tiny", params={"label": "b"}, progress=False)
    assert _ran(capsys) == ["make", "use", "use"]
    assert (out / "use" / "cache" / "a.json").exists(), "a growth parameter discarded finished work"
    assert (out / "tables" / "92-b.csv").exists()
    assert not (out / "tables" / "92-a.csv").exists(), "the report would show a table of an earlier run"


@pytest.mark.slow
def test_library_edit_reruns_stages(two_stages, capsys):
    """Issue 11: the stage key includes the library code, so editing sda_lib reruns the stages."""
    runner.run_stages("toy-tiny", ["make"], progress=False)
    runner.run_stages("toy-tiny", ["make"], progress=False)
    assert _ran(capsys) == ["make"]
    (runner.LIBRARY / "code.py").write_text("x = 2\n")
    runner.run_stages("toy-tiny", ["make"], progress=False)
    assert _ran(capsys) == ["make"], "a library edit left the stage up to date"


@pytest.mark.slow
def test_threads_reach_the_kernel_without_touching_this_process(two_stages, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    runner.run_stages("toy-tiny", threads=3, progress=False)
    assert _result(two_stages)["threads"] == "3"
    assert "OMP_NUM_THREADS" not in os.environ


SLEEP = """\
import json, time
from pathlib import Path
start = time.time()
time.sleep(seconds)
if fail:
    raise RuntimeError("planned failure")
Path(out_dir, f"{name}.json").write_text(json.dumps({"start": start, "end": time.time()}))
"""


@pytest.fixture
def diamond(outputs, tmp_path, monkeypatch):
    """Stages a and b read nothing and sleep 3 s; c reads both."""
    folder = tmp_path / "nb"
    folder.mkdir()
    for name, seconds in (("a", 3), ("b", 3), ("c", 0)):
        _write_notebook(
            folder,
            f"9{name}.ipynb",
            f'dataset = "x"\nout_dir = None\nname = "{name}"\nseconds = {seconds}\nfail = False',
            SLEEP,
        )
    monkeypatch.setattr(runner, "NOTEBOOKS", folder)
    stages = {n: runner.Stage(f"9{n}.ipynb", outputs=lambda p, n=n: [f"{n}.json"]) for n in "ab"}
    stages["c"] = runner.Stage("9c.ipynb", reads=("a", "b"), outputs=lambda p: ["c.json"])
    monkeypatch.setattr(runner, "STAGES", stages)
    return outputs / "toy-tiny" / "default"


def _times(out, name):
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.slow
def test_jobs_run_independent_stages_at_once_and_wait_for_what_a_stage_reads(diamond):
    runner.run_stages("toy-tiny", progress=False, jobs=2)
    a, b, c = (_times(diamond, n) for n in "abc")
    assert a["start"] < b["end"] and b["start"] < a["end"], "a and b did not overlap"
    assert c["start"] >= max(a["end"], b["end"])
    assert set(json.loads((diamond / "stages.json").read_text())) == {"a", "b", "c"}


@pytest.mark.slow
def test_a_failure_lets_the_running_stage_finish_and_starts_nothing_that_reads_it(diamond):
    with pytest.raises(runner.StageFailed, match="stage 'b' failed.*planned failure"):
        runner.run_stages("toy-tiny", params={"b.fail": True}, progress=False, jobs=2)
    assert (diamond / "a.json").exists() and not (diamond / "c.json").exists()
    assert set(json.loads((diamond / "stages.json").read_text())) == {"a"}  # a is kept: a rerun skips it


def test_jobs_and_threads_must_be_positive(outputs):
    with pytest.raises(runner.UsageError, match="jobs and threads must be >= 1"):
        runner.run_stages("toy-tiny", ["data"], jobs=0)


@pytest.mark.slow
def test_kernels_run_where_the_user_typed_the_command(two_stages, tmp_path, monkeypatch):
    """`-p source=../data/beauty` names a folder relative to the shell, not to notebooks/."""
    here = tmp_path / "shell"
    here.mkdir()
    monkeypatch.chdir(here)
    runner.run_stages("toy-tiny", progress=False)
    assert _result(two_stages)["cwd"] == str(here)


def test_library_version_covers_every_python_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "sub" / "b.py").write_text("b = 1\n")
    monkeypatch.setattr(runner, "LIBRARY", tmp_path)
    first = runner.library_version()
    (tmp_path / "notes.txt").write_text("not code")
    assert runner.library_version() == first
    (tmp_path / "sub" / "b.py").write_text("b = 2\n")
    assert runner.library_version() != first


@pytest.mark.slow
def test_failure_names_notebook_and_cell(outputs, tmp_path, monkeypatch):
    broken = tmp_path / "nb"
    broken.mkdir()
    _write_notebook(broken, "99_broken.ipynb", "dataset = 'x'\nout_dir = None", "1 / 0")
    monkeypatch.setattr(runner, "NOTEBOOKS", broken)
    monkeypatch.setattr(runner, "STAGES", {"broken": runner.Stage("99_broken.ipynb")})
    with pytest.raises(
        runner.StageFailed,
        match=r"stage 'broken' failed in nb/99_broken.ipynb, in the cell starting '1 / 0' .*ZeroDivisionError",
    ):
        runner.run_stages("toy-tiny", progress=False)
    assert not (outputs / "toy-tiny" / "default" / "stages.json").exists()


# ---------------------------------------------------------------- headless execution never hangs

EXPLORER = """\
import numpy as np
from PIL import Image
from sda_lib.analysis.explorer import ExplorerData, explorer_widget
rng = np.random.default_rng(run)
Image.new("RGB", (8, 8), "red").save(f"{out_dir}/item-{run}.png")
spaces = {"zero-shot": (rng.normal(size=(6, 4)), rng.normal(size=(6, 4)))}
data = ExplorerData([f"item {i}" for i in range(6)], [f"{out_dir}/item-{run}.png"] * 6, ["n"] * 6, spaces)
explorer_widget(data, item=0, k=3, tau=1.0)
"""

# Installed in a cell, this makes the kernel run the cell and then lose its reply, as a kernel
# client that misses the reply on its shell channel sees it (jupyter/nbclient#312).
DROP_REPLY = """\
session = get_ipython().kernel.session
send = session.send
def drop_execute_reply(stream, msg_or_type, *args, **kwargs):
    if msg_or_type == "execute_reply":
        session.send = send  # this once
        return None
    return send(stream, msg_or_type, *args, **kwargs)
session.send = drop_execute_reply
"""


@pytest.mark.slow
def test_the_explorer_cell_runs_headless_many_times_two_at_once(tmp_path, monkeypatch):
    """The runner's kernels, two at a time from threads of one process as `--jobs 2` runs them:
    every execution finishes (none waits on a widget), and none builds a widget."""
    monkeypatch.setenv("JPY_SESSION_NAME", "a Jupyter server runs this test")  # the runner overrides it
    _write_notebook(tmp_path, "explorer.ipynb", "out_dir = None\nrun = 0", EXPLORER)
    kernels = runner._kernel_manager({"SDA_WIDGETS": "static", "JPY_SESSION_NAME": None})

    def run(i):
        parameters = {"out_dir": str(tmp_path), "run": i}
        return runner.execute(tmp_path / "explorer.ipynb", tmp_path / f"run-{i}.ipynb", parameters, kernels, 60, False)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        failures = list(pool.map(run, range(8)))
    assert failures == [None] * 8
    for i in range(8):
        outputs = nbformat.read(tmp_path / f"run-{i}.ipynb", as_version=4).cells[-1].outputs
        shown = [kind for output in outputs for kind in output.get("data", {})]
        assert "application/vnd.jupyter.widget-view+json" not in shown
        assert "static views below stand in" in outputs[0]["data"]["text/html"]


@pytest.mark.slow
def test_a_lost_reply_times_out_instead_of_hanging(tmp_path):
    _write_notebook(tmp_path, "lost.ipynb", "x = 0", DROP_REPLY + "x = 1")
    start = time.perf_counter()
    kernels = runner._kernel_manager({})
    failure = runner.execute(tmp_path / "lost.ipynb", tmp_path / "out.ipynb", {}, kernels, 5, False)
    assert failure["kind"] == "timeout" and failure["cell"] == 1 and failure["timeout"] == 5
    assert time.perf_counter() - start < 90  # a kernel start, 5 s, a shutdown


@pytest.fixture
def one_stage(outputs, tmp_path, monkeypatch):
    """A one-stage runner whose notebook runs `code`."""

    def make(code):
        folder = tmp_path / "nb"
        folder.mkdir(exist_ok=True)
        _write_notebook(folder, "97_slow.ipynb", "dataset = 'x'\nout_dir = None", code)
        monkeypatch.setattr(runner, "NOTEBOOKS", folder)
        monkeypatch.setattr(runner, "STAGES", {"slow": runner.Stage("97_slow.ipynb")})

    return make


@pytest.mark.slow
def test_a_cell_past_its_timeout_fails_the_stage_naming_it(one_stage):
    one_stage("import time\ntime.sleep(60)")
    with pytest.raises(
        runner.StageFailed,
        match=r"stage 'slow' failed in nb/97_slow.ipynb, timed out in the cell starting 'import time' "
        r"\(cell 3 of the executed copy\): no reply within 2 s; if the cell needs longer, give the runner "
        r"--cell-timeout SECONDS \(0: no bound\)\n  the executed copy: .*97_slow.ipynb",
    ):
        runner.run_stages("toy-tiny", progress=False, cell_timeout=2)


@pytest.mark.slow
def test_a_kernel_that_dies_fails_the_stage(one_stage):
    one_stage("import os\nos._exit(1)")
    died = r"stage 'slow' failed .* 'import os' \(cell 3 of the executed copy\): the kernel died"
    with pytest.raises(runner.StageFailed, match=died):
        runner.run_stages("toy-tiny", progress=False)


def test_cell_timeout_must_not_be_negative(outputs):
    with pytest.raises(runner.UsageError, match="cell_timeout must be >= 0"):
        runner.run_stages("toy-tiny", ["data"], cell_timeout=-1)


# ---------------------------------------------------------------- parameters


def test_scoped_parameter_reaches_only_its_stage():
    given = runner.stage_parameters({"adapt.steps": 800, "seeds": [0, 1]})
    assert given["adapt"] == {"steps": 800}
    assert all("steps" not in p for s, p in given.items() if s != "adapt")
    assert given["recommend"]["seeds"] == given["ablations"]["seeds"] == [0, 1]
    # a scoped value beats an unscoped one, whatever their order
    given = runner.stage_parameters({"recommend.epochs": 5, "epochs": 9})
    assert given["recommend"]["epochs"] == 5


@pytest.mark.parametrize("key", ["dataset", "out_dir", "adapt.dataset"])
def test_reserved_names_are_refused(key):
    with pytest.raises(runner.ParameterError, match="--dataset|--out"):
        runner.stage_parameters({key: "toy"})


def test_unknown_parameter_lists_each_stage_and_its_parameters():
    with pytest.raises(runner.ParameterError) as err:
        runner.stage_parameters({"adapt.steps": 20, "nonexistent": 1})
    message = str(err.value)
    assert "nonexistent" in message
    assert re.search(r"adapt: .*\bsteps\b", message) and re.search(r"recommend: .*\bepochs\b", message)
    with pytest.raises(runner.ParameterError, match="no_stage"):
        runner.stage_parameters({"no_stage.steps": 20})
    with pytest.raises(runner.ParameterError, match=r"adapt.*epochs"):
        runner.stage_parameters({"adapt.epochs": 20})
    with pytest.raises(runner.ParameterError, match=r"not run"):
        runner.stage_parameters({"adapt.steps": 20}, ["data"])
    with pytest.raises(runner.ParameterError, match=r"epochs"):
        runner.stage_parameters({"epochs": 20}, ["data", "adapt"])


def test_values_are_checked_against_the_notebook_defaults():
    with pytest.raises(runner.ParameterError, match=r"steps.*int"):
        runner.stage_parameters({"steps": "abc"})
    with pytest.raises(runner.ParameterError, match=r"seeds.*list"):
        runner.stage_parameters({"seeds": 0})
    with pytest.raises(runner.ParameterError, match=r"learn_tau.*bool"):
        runner.stage_parameters({"learn_tau": 1})
    with pytest.raises(runner.ParameterError, match=r"steps.*int"):
        runner.stage_parameters({"steps": True})
    assert runner.stage_parameters({"lr": 1})["adapt"]["lr"] == 1  # an int where a float is expected
    assert runner.stage_parameters({"explorer_tau": 0.5})["alignment"]["explorer_tau"] == 0.5  # None default
    assert runner.stage_parameters({"source": "/data"})["data"]["source"] == "/data"


def test_cli_fails_at_once_naming_the_parameter(outputs, capsys):
    assert runner.main(["--dataset", "toy-tiny", "-p", "adapt.steps=20", "-p", "nonexistent=1"]) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert runner.main(["--dataset", "toy-tiny", "-p", "dataset=toy"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert runner.main(["--dataset", "toy-tiny", "--stages", "data,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not outputs.exists(), "a stage ran before the command line was checked"


def test_unknown_stage_is_a_usage_error_not_an_exit():
    with pytest.raises(runner.UsageError, match="nope"):
        runner.run_stages("toy-tiny", ["nope"])


def test_parse_param():
    assert parse_param("r=8") == ("r", 8)
    assert parse_param("tau=0.5") == ("tau", 0.5)
    assert parse_param("source=/data/beauty") == ("source", "/data/beauty")
    assert parse_param("force=True") == ("force", True)
    assert parse_param("adapt.steps=800") == ("adapt.steps", 800)


# ---------------------------------------------------------------- the notebooks' parameters


def _parameters(path) -> dict:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(cell.source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def test_notebooks_are_committed_without_outputs_with_one_parameters_cell():
    studies = ["09_when_sda_pays.ipynb"]  # drives a sweep of the stages (sda_lib.workbench.sweep); no stage itself
    assert [p.name for p in NOTEBOOK_FILES] == [s.notebook for s in runner.STAGES.values()] + studies
    for path in NOTEBOOK_FILES:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert all(
            not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"
        ), path.name


def test_a_parameter_name_means_one_thing_with_one_default():
    """Shared names hold the same default in every notebook; the adapter is `adapter_name`
    everywhere; inference and training batches have different names."""
    declared = {p.name: _parameters(p) for p in NOTEBOOK_FILES}
    seen = {}
    for notebook, params in declared.items():
        for name, default in params.items():
            if name != "dataset":
                assert seen.setdefault(name, (notebook, default))[1] == default, (name, notebook, seen[name])
    for notebook, params in declared.items():
        assert "name" not in params and "batch_size" not in params, notebook
    uses_adapter = {n for n, p in declared.items() if "adapter_name" in p}
    assert uses_adapter == {
        "03_adapt.ipynb",
        "04_export.ipynb",
        "05_recommend.ipynb",
        "07_gradient_conflict.ipynb",
        "08_alignment.ipynb",
    }
    given = runner.stage_parameters({"adapter_name": "v2"})
    assert {s for s, p in given.items() if p.get("adapter_name") == "v2"} == {
        "adapt",
        "export",
        "recommend",
        "gradient_conflict",
        "alignment",
    }
    assert "embed_batch_size" in declared["02_zero_shot.ipynb"] and "embed_batch_size" in declared["04_export.ipynb"]
    assert "train_batch_size" in declared["03_adapt.ipynb"] and "train_batch_size" in declared["06_ablations.ipynb"]


def test_adapt_notebook_exposes_every_adapt_config_setting_with_its_default():
    """One default per setting: 03's parameters are AdaptConfig's fields with AdaptConfig's
    defaults (those a profile decides through the quick profile, sda_lib.workbench.profiles.QUICK), each
    passed to AdaptConfig; other notebooks' settings of the same name agree."""
    nb_name = {"batch_size": "train_batch_size"}  # the notebooks' name for AdaptConfig.batch_size
    config = {nb_name.get(f.name, f.name): f.default for f in fields(AdaptConfig)}
    adapt = {**_parameters(runner.NOTEBOOKS / "03_adapt.ipynb"), **profiles.QUICK["adapt"]}
    assert {k: adapt.get(k, "<missing>") for k in config} == config
    source = "".join(c.source for c in nbformat.read(runner.NOTEBOOKS / "03_adapt.ipynb", as_version=4).cells)
    for f in fields(AdaptConfig):
        assert re.search(rf"\b{f.name}={nb_name.get(f.name, f.name)}\b", source), f"03 does not pass {f.name}"
    for path in NOTEBOOK_FILES:
        params = _parameters(path)
        for key in profiles.QUICK.get(_stage(path), {}):  # the profile's, checked for 03 above
            params.pop(key, None)
        assert {k: params[k] for k in config if k in params} == {k: config[k] for k in config if k in params}, path.name


def _stage(path) -> str | None:
    return next((s for s, spec in runner.STAGES.items() if spec.notebook == path.name), None)


def test_profiles_fill_only_what_the_command_line_leaves_open():
    declared = {s: runner.notebook_parameters(s) for s in runner.STAGES}
    stages = list(runner.STAGES)
    profile, given = runner.profiled_parameters("beauty", {}, stages, declared)
    assert profile == "paper"
    assert given["adapt"]["steps"] == 4000 and given["adapt"]["gradient_checkpointing"] is None
    assert given["adapt"]["backbone"] == given["export"]["backbone"] == "7b"
    assert given["data"]["recipe"] == "sda" and given["recommend"]["recsys_preset"] == "authors"
    # Table 1's CLIP row (the ViT-L/14 checkpoint the labels call "CLIP") and its features in 05
    assert given["zero_shot"]["baselines"] == ["pretrained", "clip"]
    assert given["zero_shot"]["clip_model"] == profiles.PAPER_CLIP == published.CLIP
    assert given["recommend"]["features"] == ["id", "clip", "zero-shot", "sda", "pretrained"]
    # section 3.3.3 in the main run's regime: its lr and items a step, gradients in training mode
    conflict, adapt = given["gradient_conflict"], runner.notebook_parameters("adapt")
    assert (conflict["conflict_lr"], conflict["conflict_batch_size"]) == (adapt["lr"], adapt["train_batch_size"])
    assert conflict["conflict_mode"] == "train" and conflict["gradient_checkpointing"] is True
    _, sports = runner.profiled_parameters("sports", {}, stages, declared)
    assert sports["adapt"]["steps"] == 2000 == sports["ablations"]["ablation_steps"]

    _, smoke = runner.profiled_parameters("beauty", {"backbone": "tiny", "adapt.steps": 5}, stages, declared)
    assert smoke["adapt"]["steps"] == 5 and smoke["export"]["backbone"] == "tiny"
    assert smoke["ablations"]["ablation_steps"] == 4000  # the command line left this one open

    profile, toy_tiny = runner.profiled_parameters("toy-tiny", {}, stages, declared)
    assert profile == "quick"  # the library's defaults (profiles.QUICK), the profile named to every stage
    assert toy_tiny == {s: {**profiles.QUICK.get(s, {}), "profile": "quick"} for s in runner.STAGES}
    profile, teaching = runner.profiled_parameters("toy", {}, stages, declared)
    assert profile == "teaching"  # the demo's default
    backbones = {s: p["backbone"] for s, p in teaching.items() if "backbone" in declared[s]}
    assert set(backbones.values()) == {"mini"} and len(backbones) == 5  # every stage that embeds
    sizes = teaching["adapt"]["steps"], teaching["ablations"]["ablation_steps"], teaching["gradient_conflict"]
    assert sizes[:2] == (100, 40) and sizes[2]["conflict_steps"] == 20
    assert teaching["recommend"] == {**profiles.QUICK["recommend"], "profile": "teaching"}
    trained = {s for s, p in teaching.items() if p.get("dropout_masks") == "shared"}
    assert trained == {"adapt", "ablations", "gradient_conflict"}
    profile, toy_paper = runner.profiled_parameters("toy", {"profile": "paper"}, stages, declared)
    assert profile == "paper" and toy_paper["adapt"]["steps"] == 4000
    with pytest.raises(runner.ParameterError, match="-p profile must be one of paper, quick, teaching, got 'fast'"):
        runner.profiled_parameters("toy", {"profile": "fast"}, stages, declared)


@pytest.mark.slow
def test_the_command_line_shows_each_stage(outputs):
    """Under `python -m` the module is __main__; its progress lines must still reach stderr."""
    import subprocess
    import sys

    env = {**os.environ, "SDA_OUTPUTS": str(outputs)}
    command = [sys.executable, "-m", "sda_lib.workbench.run", "--dataset", "toy-tiny", "--stages", "data"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[1/1] data: running notebooks/01_data.ipynb" in result.stderr
    assert re.search(r"\[1/1\] data: done in [\d.]+ s", result.stderr)
