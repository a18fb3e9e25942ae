"""The stage runner: execute the stage notebooks in order with papermill.

    sda run --dataset toy [--stages data,adapt] [--run NAME | --out DIR] [-p [stage.]key=value ...]

Executed copies land in `outputs/<dataset>/<run>/`, with `report.html` built from what the
stages saved (see sda_lib.workbench.report). The first failing stage stops the run (stages already running
finish), naming the notebook and cell.

Profiles (sda_lib.workbench.profiles): `-p profile=paper` runs the authors' experiment (the default on the
Amazon datasets), `-p profile=teaching` the notebooks' CPU-sized settings on the pretrained `mini`
backbone (the default on toy), `-p profile=quick` the notebooks' own defaults on the random `tiny`
preset (the default on toy-tiny and your own data); a profile fills only what the command line
leaves open.

Stages run `--jobs` at a time (default: one per core, at most 3; one on a GPU host), each once the
stages it reads (STAGES) are done.

Parameters: `-p key=value` goes to every stage whose notebook declares `key`; `-p stage.key=value`
(e.g. `-p adapt.steps=800`) to that stage only, and wins over an unscoped value. A key no stage
declares, an unknown stage, a value of another type than the notebook's default, and `dataset` or
`out_dir` (set by --dataset and --out) are refused before any stage runs.

A stage is skipped when it is current: its outputs (the files in STAGES) are still there as it
left them, and it would run on what it ran on last time: the same notebook, parameters and
sda_lib code, and the same outputs of the stages it reads (the data card among them). Otherwise
it runs, and the stages reading it then see changed inputs and run too. When what a stage reads,
its notebook, the library or its parameters changed, the runner first deletes the folders the
stage resumes from (its `resumes_from`), so nothing computed from the old inputs is read back; a
change only to parameters that add settings (its `grows`, e.g. more ablation variants) keeps
them. A rerun deletes the stage's earlier report tables, figures and findings (`tables/NN-*`,
`figures/NN-*`, `findings/NN-*`), so the report shows those of its last run only.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.names import BadName, check_dataset_name, check_name, check_path_parameters
from ..utils.choices import check_choice
from ..utils.exits import USAGE, command
from ..utils.io import file_sha256, write_json
from ..utils.locks import folder_lock
from ..utils.params import ANY, ParameterError, UsageError, add_param_option, check_type
from ..utils.paths import NOTEBOOKS, data_dir, run_dir
from ..utils.preempt import Preempted, on_sigterm
from .profiles import (
    CELL_TIMEOUT,
    QUICK,
    MissingWeights,
    Profile,
    check_weights,
    default_profile,
    profile_parameters,
)
from .report import build_report

log = logging.getLogger(__spec__.name)  # not __name__, which is "__main__" under python -m
LIBRARY = Path(__file__).resolve().parents[1]  # sda_lib: its *.py files are part of every stage's key
RESERVED = {"dataset": "--dataset", "run": "--run", "out_dir": "--out"}  # set by the runner itself
REPORT_FILES = (
    "tables/{prefix}-*.csv",
    "tables/{prefix}-*.notes.txt",
    "figures/{prefix}-*.json",
    "findings/{prefix}-*.json",
)  # a stage's, for the report


def _nothing(params: dict) -> list:
    return []


@dataclass(frozen=True)
class Stage:
    """A notebook and what the runner needs to know to decide whether it is current.

    Paths are relative to the run folder (or absolute) and computed from the stage's parameters
    (the notebook's defaults updated with what the command line gave it, plus `dataset`)."""

    notebook: str
    reads: tuple[str, ...] = ()  # the earlier stages whose outputs it reads
    outputs: Callable[[dict], list] = _nothing  # small files it leaves, fingerprinted (sha256)
    resumes_from: Callable[[dict], list] = _nothing  # folders it reads back if present
    grows: tuple[str, ...] = ()  # parameters whose change only adds settings to what is there


def _tables(*names: str) -> list[str]:
    """The manifests of feature tables under embeddings/."""
    return [f"embeddings/{name}/manifest.json" for name in names]


def _table_folders(*names: str) -> list[str]:
    """Feature table folders with their export chunks."""
    return [f"embeddings/{name}{suffix}" for name in names for suffix in ("", ".parts")]


STAGES: dict[str, Stage] = {
    "data": Stage("01_data.ipynb", outputs=lambda p: [data_dir(p["dataset"]) / "card.json"]),
    "zero_shot": Stage(
        "02_zero_shot.ipynb",
        reads=("data",),
        outputs=lambda p: _tables("zero-shot", *p["baselines"]),
        resumes_from=lambda p: _table_folders("zero-shot", *p["baselines"]),
    ),
    "adapt": Stage(
        "03_adapt.ipynb",
        reads=("data",),
        outputs=lambda p: [f"adapters/{p['adapter_name']}/adapt.json"],
        resumes_from=lambda p: [f"adapters/{p['adapter_name']}"],
    ),
    "export": Stage(
        "04_export.ipynb",
        reads=("data", "zero_shot", "adapt"),
        outputs=lambda p: _tables(p["adapter_name"]),
        resumes_from=lambda p: _table_folders(p["adapter_name"]),
    ),
    "recommend": Stage(
        "05_recommend.ipynb",
        reads=("data", "zero_shot", "export"),
        outputs=lambda p: ["recsys/results.parquet"],
        resumes_from=lambda p: ["recsys"],
        grows=("models", "features", "seeds", "protocol", "reference"),
    ),
    "ablations": Stage(
        "06_ablations.ipynb",
        reads=("data",),
        outputs=lambda p: ["ablations/recsys/results.parquet"],
        resumes_from=lambda p: ["ablations"],
        grows=("variants", "seeds", "model", "protocol"),
    ),
    "gradient_conflict": Stage(
        "07_gradient_conflict.ipynb",
        reads=("data", "adapt"),
        outputs=lambda p: ["tables/07-gradient-conflict-summary.csv"],
        resumes_from=lambda p: ["analysis/gradient-conflict"],
    ),
    "alignment": Stage(
        "08_alignment.ipynb",
        reads=("data", "zero_shot", "adapt", "export"),
        outputs=lambda p: ["tables/08-alignment-zero-shot-vs-adapted.csv"],
    ),
}


class StageFailed(RuntimeError):
    pass


def notebook_parameters(stage: str) -> dict[str, object]:
    """The parameters a stage's notebook declares, with their default values: the notebook's own,
    and for the settings a profile decides (None in the notebook: "the profile's") the quick
    profile's, which the library holds (sda_lib.workbench.profiles.QUICK)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(NOTEBOOKS / STAGES[stage].notebook))
    defaults = {}
    for name, info in declared.items():
        try:
            defaults[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            defaults[name] = ANY
    return {**defaults, **{k: v for k, v in QUICK.get(stage, {}).items() if k in defaults}}


def stage_parameters(
    params: dict, stages: list[str] | None = None, declared: dict[str, dict] | None = None
) -> dict[str, dict]:
    """{stage: the parameters it gets} for every stage of STAGES, from `-p` values keyed `key` or
    `stage.key`. Raises ParameterError for reserved names, unknown stages or keys, keys only
    stages outside `stages` (default all) declare, and values unlike the notebook's default."""
    stages = list(STAGES) if not stages else stages
    declared = declared or {s: notebook_parameters(s) for s in STAGES}
    given: dict[str, dict] = {s: {} for s in STAGES}
    unscoped = [(k, v) for k, v in params.items() if "." not in k]
    scoped = [(k, v) for k, v in params.items() if "." in k]
    unknown = []
    for name, value in unscoped + scoped:  # scoped values win
        scope, _, key = name.rpartition(".")
        if key in RESERVED:
            raise ParameterError(f"-p {name}: {key} is set by the runner; use {RESERVED[key]}")
        if scope:
            if scope not in STAGES:
                raise ParameterError(f"-p {name}: there is no stage {scope!r}; stages are: {', '.join(STAGES)}")
            if scope not in stages:
                raise ParameterError(f"-p {name}: stage {scope!r} is not run here (stages: {', '.join(stages)})")
            if key not in declared[scope]:
                raise ParameterError(
                    f"-p {name}: stage {scope!r} has no parameter {key!r}; its parameters: {_names(declared[scope])}"
                )
            targets = [scope]
        else:
            targets = [s for s in STAGES if key in declared[s]]
            if not any(s in stages for s in targets):
                unknown.append(key)
                continue
        for stage in targets:
            check_type(name, value, stage, declared[stage][key])
            given[stage][key] = value
    if unknown:
        listing = "\n".join(f"  {s}: {_names(declared[s])}" for s in stages)
        raise ParameterError(
            f"parameter(s) {', '.join(unknown)} are declared by none of the stages run; their parameters:\n{listing}"
        )
    return given


def profiled_parameters(
    dataset: str, params: dict, stages: list[str], declared: dict[str, dict]
) -> tuple[str, dict[str, dict]]:
    """(profile, {stage: parameters}): the command line's `-p` values (see stage_parameters), then
    the profile's values for whatever they leave open. `-p profile=...` names the profile, one for
    the whole run, passed to every stage; the default depends on the dataset (sda_lib.workbench.profiles)."""
    params = dict(params)
    profile = params.pop("profile", None) or default_profile(dataset)
    check_choice(profile, Profile, "-p profile", ParameterError)
    scoped = [k for k in params if k.rpartition(".")[2] == "profile"]
    if scoped:
        raise ParameterError(f"-p {scoped[0]}: a run has one profile, for every stage: -p profile={profile}")
    given = stage_parameters(params, stages, declared)
    for stage, values in profile_parameters(profile, dataset).items():
        for key, value in values.items():
            if key in declared.get(stage, ()) and key not in given[stage]:
                check_type(f"{stage}.{key}", value, stage, declared[stage][key])
                given[stage][key] = value
    for stage in STAGES:
        if "profile" in declared[stage]:
            given[stage]["profile"] = profile
    return profile, given


def _names(defaults: dict) -> str:
    return ", ".join(k for k in defaults if k not in RESERVED) or "(none)"


def library_version() -> str:
    """A hash of every *.py file under sda_lib (any edit reruns the stages)."""
    h = hashlib.sha256()
    for path in sorted(LIBRARY.rglob("*.py")):
        h.update(str(path.relative_to(LIBRARY)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _digest(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fingerprints(out: Path, stage: str, params: dict) -> dict[str, str | None]:
    """sha256 of each output file of `stage` (None when it is missing), plus its report tables,
    figures and findings."""
    prefix = STAGES[stage].notebook.split("_")[0]
    paths = [out / p for p in STAGES[stage].outputs(params)]
    paths += [path for pattern in REPORT_FILES for path in sorted(out.glob(pattern.format(prefix=prefix)))]
    prints = {}
    for path in paths:
        label = str(path.relative_to(out)) if path.is_relative_to(out) else str(path)
        prints[label] = file_sha256(path)[:16] if path.is_file() else None
    return prints


def _kernel_manager(env: dict[str, str]):
    """A kernel manager class that starts kernels with `env` added to this process's environment
    (which stays as it is; None removes a variable), and whose `running()` gives the process ids of
    the kernels running now (to pass SIGTERM on to: kernels run in a session of their own)."""
    from jupyter_client import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        started = []  # the provisioners of the kernels started so far (stages may run at once)

        async def start_kernel(self, **kw):
            merged = {**os.environ, **kw.get("env", {}), **env}
            kw["env"] = {name: value for name, value in merged.items() if value is not None}
            await super().start_kernel(**kw)
            KernelManager.started.append(self.provisioner)

        @classmethod
        def running(cls) -> list[int]:
            return [k.pid for k in list(cls.started) if k.process is not None and k.process.poll() is None]

    return KernelManager


def execute(notebook: Path, executed: Path, parameters: dict, kernels, timeout: int | None, progress: bool):
    """Execute `notebook` into `executed` with papermill on a kernel from `kernels`, each cell
    bounded by `timeout` seconds (None: no bound). Returns None on success, else what went wrong:
    {"kind": "error" | "timeout" | "dead", "source": the failing cell's code, ...}.

    Two of these may run at once in threads of one process: each has its own event loop and zmq
    context and sockets. What once hung a run for good was a widget cell: nbclient stands in for
    the frontend of an Output widget by sending comm messages on the shell socket while it waits
    there for the cell's reply, and the reply can then go unnoticed (jupyter/nbclient#312). The
    runner's kernels therefore build no widgets (sda_lib.utils.frontend), and the timeout bounds the rest."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    started = []  # (index, code) of each cell as it starts, to name the one that timed out

    def on_cell_execute(cell, cell_index, **_):
        started.append((cell_index, cell.source))

    try:
        pm.execute_notebook(
            str(notebook),
            str(executed),
            parameters=parameters,
            cwd=os.getcwd(),  # relative paths in parameters mean what they mean where the user typed them
            progress_bar=progress,
            kernel_name="python3",
            kernel_manager_class=kernels,
            execution_timeout=timeout,
            on_cell_execute=on_cell_execute,
            coalesce_streams=True,  # a cell's text in one output, each progress bar at its last state
        )
    except pm.PapermillExecutionError as err:
        return {
            "kind": "error",
            "source": err.source,
            "exec_count": err.exec_count,
            "error": f"{err.ename}: {err.evalue}",
        }
    except (CellTimeoutError, DeadKernelError) as err:
        cell, source = started[-1] if started else (None, "")
        kind = "timeout" if isinstance(err, CellTimeoutError) else "dead"
        return {"kind": kind, "source": source, "cell": cell, "timeout": timeout}
    return None


def failure_message(what: str, notebook: Path, executed: Path, failure: dict) -> str:
    """One paragraph naming what failed, in which notebook and cell, why, and where to look."""
    first_line = next((line for line in failure["source"].splitlines() if line.strip()), "")
    where = f"in the cell starting {first_line!r}"
    if failure["kind"] == "error":
        why = f"{where} (execution {failure['exec_count']}): {failure['error']}"
    else:
        where += f" (cell {failure['cell'] + 1} of the executed copy)"
        why = (
            f"timed out {where}: no reply within {failure['timeout']} s; if the cell needs longer, give the "
            "runner --cell-timeout SECONDS (0: no bound)"
            if failure["kind"] == "timeout"
            else f"{where}: the kernel died (killed for memory?)"
        )
    return f"{what} failed in {notebook}, {why}\n  the executed copy: {executed}"


def default_jobs(threads: int = 1) -> int:
    """Stages at once when not told: one on a GPU host (the stages would share the device), else as
    many as the CPU cores hold at `threads` each, at most 3 (the stage graph never has more ready)."""
    import torch

    if torch.cuda.is_available():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(3, cores // max(threads, 1)))


def run_stages(
    dataset: str,
    stages: list[str] | None = None,
    out: Path | None = None,
    run: str = "default",
    params: dict | None = None,
    force: bool = False,
    progress: bool = True,
    threads: int = 1,
    jobs: int = 1,
    cell_timeout: int | None = None,
) -> Path:
    """Run `stages` (default: all, in STAGES order) for `dataset` and return the run folder.
    Stages that are current are skipped (see the module docstring); `force` reruns them anyway.
    Up to `jobs` stages run at once, each as soon as the stages it reads are done; each notebook
    kernel runs with `threads` torch/OpenMP threads (the offline presets run fastest on one) and
    builds no widgets (sda_lib.utils.frontend). A cell running longer than `cell_timeout` seconds (default:
    the profile's, sda_lib.workbench.profiles.CELL_TIMEOUT; 0: no bound) fails its stage, as does a kernel that
    dies.
    Raises UsageError before running anything when a stage or parameter is wrong.

    Holds the run folder for this process (sda_lib.utils.locks); on SIGTERM it passes the signal to the
    stages' kernels, whose long loops checkpoint, and raises `Preempted` (sda_lib.utils.preempt)."""
    if jobs < 1 or threads < 1:
        raise UsageError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
    stages = list(STAGES) if not stages else stages
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(unknown)}; stages are: {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    check_names(dataset, run if out is None else None, params or {})
    defaults = {s: notebook_parameters(s) for s in STAGES}
    profile, given = profiled_parameters(dataset, dict(params or {}), stages, defaults)
    try:
        for stage in stages:
            check_weights(given[stage], f"stage {stage}, profile {profile}")
    except MissingWeights as err:
        raise UsageError(str(err)) from None
    out = Path(out) if out is not None else run_dir(dataset, run)
    if cell_timeout is not None and cell_timeout < 0:
        raise UsageError(f"cell_timeout must be >= 0 seconds (0: no bound), got {cell_timeout}")
    timeout = (CELL_TIMEOUT[profile] if cell_timeout is None else cell_timeout) or None
    out.mkdir(parents=True, exist_ok=True)
    # Headless kernels, even when this runner itself runs in a Jupyter server's kernel.
    kernels = _kernel_manager({"OMP_NUM_THREADS": str(threads), "SDA_WIDGETS": "static", "JPY_SESSION_NAME": None})
    with folder_lock(out, "the runner"), on_sigterm("the runner", forward=kernels.running) as stop:
        return _run(dataset, stages, out, defaults, profile, given, force, progress, kernels, timeout, stop, jobs)


def check_names(dataset: str, run: str | None, params: dict) -> None:
    """Refuse, as a UsageError, a dataset or run name or a `-p` value that names a folder
    (sda_lib.data.names.PATH_PARAMETERS) and is not one plain folder name: before anything is created."""
    try:
        check_dataset_name(dataset, "--dataset")
        if run is not None:
            check_name(run, "--run")
        check_path_parameters(params)
    except BadName as err:
        raise UsageError(str(err)) from None


def _run(dataset, stages, out: Path, defaults, profile, given, force, progress, kernels, timeout, stop, jobs) -> Path:
    """Run the stages, up to `jobs` at once: a stage starts once the stages it reads have finished,
    the earliest in STAGES order first (so the adapt -> export -> recommend chain leads). After a
    failure or SIGTERM nothing new starts; what is running finishes (or checkpoints), then the
    first failure is raised."""
    record = _Record(out / "stages.json")
    full = {s: {**defaults[s], **given[s], "dataset": dataset, "out_dir": str(out)} for s in STAGES}
    run_stage = functools.partial(
        _run_stage,
        record=record,
        stop=stop,
        out=out,
        full=full,
        given=given,
        library=library_version(),
        profile=profile,
        force=force,
        kernels=kernels,
        timeout=timeout,
        progress=progress and jobs == 1,  # two notebooks' bars on one line read as noise
    )
    waiting, running, failure = list(stages), {}, None
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        while waiting or running:
            busy = set(waiting) | set(running.values())
            ready = [s for s in waiting if not busy.intersection(STAGES[s].reads)]
            for stage in ready[: jobs - len(running)] if failure is None and not stop else []:
                waiting.remove(stage)
                label = f"[{stages.index(stage) + 1}/{len(stages)}] {stage}"
                running[pool.submit(run_stage, stage, label)] = stage
            if not running:
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                del running[future]
                failure = failure or future.exception()
    if failure is not None:
        raise failure
    if stop and waiting:
        raise Preempted(f"stopped on SIGTERM before stage(s) {', '.join(waiting)}; run the same command again to go on")
    report = build_report(out)
    log.info(f"report: {report}")
    return out


class _Record:
    """stages.json: what each finished stage ran on and left, shared by the stages running at once."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        self.stages = json.loads(path.read_text()) if path.exists() else {}

    def get(self, stage: str) -> dict | None:
        with self.lock:
            return self.stages.get(stage)

    def set(self, stage: str, entry: dict | None) -> None:
        with self.lock:
            if entry is None:
                self.stages.pop(stage, None)
            else:
                self.stages[stage] = entry
            write_json(self.path, self.stages)


def _run_stage(
    stage, label, record: _Record, stop, out: Path, full, given, library, profile, force, kernels, timeout, progress
):
    """Run one stage unless it is current, and record it."""
    spec = STAGES[stage]
    notebook = NOTEBOOKS / spec.notebook
    stage_params = {"dataset": full[stage]["dataset"], "out_dir": str(out), **given[stage]}
    inputs = _digest(file_sha256(notebook), library, {s: _fingerprints(out, s, full[s]) for s in spec.reads})
    key = stage_key(inputs, stage_params)
    executed = out / notebook.name
    before = record.get(stage)
    outputs = _fingerprints(out, stage, full[stage])
    if (
        not force
        and before
        and before["key"] == key
        and before.get("outputs") == outputs
        and all(outputs.values())
        and executed.exists()
    ):
        log.info(f"{label}: up to date, skipped ({executed})")
        return
    if before and _changed(before, inputs, stage_params, spec.grows):
        for folder in deletable(stage, out, full):
            shutil.rmtree(folder, ignore_errors=True)
        record.set(stage, None)  # what it computed is gone; an interrupted rerun resumes from here
    prefix = spec.notebook.split("_")[0]
    for old in [path for pattern in REPORT_FILES for path in out.glob(pattern.format(prefix=prefix))]:
        old.unlink()
    log.info(f"{label}: running {notebook.relative_to(NOTEBOOKS.parent)}")
    start = time.perf_counter()
    failure = execute(notebook, executed, stage_params, kernels, timeout, progress)
    if failure is not None:
        if stop:  # the kernel took the SIGTERM passed on to it: checkpointed (Preempted) or killed
            raise Preempted(
                f"stage {stage!r} stopped on SIGTERM; run the same command again to resume it from "
                f"its last checkpoint (executed copy so far: {executed})"
            )
        where = notebook.relative_to(NOTEBOOKS.parent)
        raise StageFailed(failure_message(f"stage {stage!r}", where, executed, failure))
    seconds = time.perf_counter() - start
    problem = unfinished(executed, [out / p for p in spec.outputs(full[stage])])
    if problem:
        raise StageFailed(f"stage {stage!r} did not finish: {problem}\n  the executed copy: {executed}")
    record.set(
        stage,
        {
            "key": key,
            "inputs": inputs,
            "params": stage_params,
            "profile": profile,
            "outputs": _fingerprints(out, stage, full[stage]),
            "seconds": round(seconds, 1),
            "completed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    log.info(f"{label}: done in {seconds:.1f} s")


def stage_key(inputs: str, params: dict) -> str:
    """What a stage's record must hold to be current: the digest of its inputs (notebook, library,
    the outputs it reads) and of its parameters (`out_dir` among them). A stage copied into another
    run folder is current there under the key of its record's `inputs` and its parameters with that
    folder's `out_dir` (sda_lib.workbench.sweep shares stages between points that way)."""
    return _digest(inputs, params)


def deletable(stage: str, out: Path, full: dict[str, dict]) -> list[Path]:
    """The folders `stage` resumes from (`full`: every stage's parameters), to delete before it
    reruns on changed inputs, each checked to be the stage's own: inside the run folder, neither
    another stage's folder nor above anything another stage declares (outputs or folders, with its
    parameters here or its defaults), and not above the stage's own folders under its default
    parameters (`adapters/` above `adapters/sda`). Names are checked before a run starts
    (check_names); this second guard raises StageFailed instead of deleting."""
    root = Path(os.path.abspath(out))

    def declared(name: str, params: dict, kinds=("outputs", "resumes_from")) -> set[Path]:
        spec = STAGES[name]
        return {Path(os.path.normpath(root / p)) for kind in kinds for p in getattr(spec, kind)(params)}

    others, own = set(), set()
    for name in STAGES:
        defaults = {**notebook_parameters(name), "dataset": full[name]["dataset"], "out_dir": str(out)}
        if name == stage:
            own = declared(name, defaults, ("resumes_from",))
        else:
            others |= declared(name, full[name]) | declared(name, defaults)
    folders = [Path(os.path.normpath(root / f)) for f in STAGES[stage].resumes_from(full[stage])]
    for folder in folders:
        above = sorted(p for p in others | own if p != folder and p.is_relative_to(folder))
        if folder == root or not folder.is_relative_to(root):
            why = f"it is not a folder inside the run folder {root}"
        elif folder in others:
            why = "another stage writes it"
        elif above:
            why = f"it holds {above[0]} too, not only what this stage writes"
        else:
            continue
        raise StageFailed(
            f"refusing to delete {folder} before rerunning stage {stage!r}: {why}; check the names given "
            "to its parameters"
        )
    return folders


def unfinished(executed: Path, outputs: list[Path]) -> str | None:
    """Why a notebook that papermill ran without an error did not finish, or None: a cell that
    raised SystemExit (papermill takes `sys.exit(0)` for success and stops there) leaves the cells
    after it unrun, and a stage is done only once its last cell ran and its declared `outputs`
    exist."""
    cells = [
        {**c, "source": "".join(c["source"]).strip()}
        for c in json.loads(Path(executed).read_text())["cells"]
        if c["cell_type"] == "code" and "".join(c["source"]).strip()
    ]
    if cells and cells[-1].get("execution_count") is None:
        errors = [(c, o) for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if not errors:
            return "its last cell never ran"
        cell, error = errors[0]
        first_line = cell["source"].splitlines()[0]
        return f"its last cell never ran: the cell starting {first_line!r} stopped it ({error.get('ename')})"
    missing = [str(p) for p in outputs if not p.exists()]
    if missing:
        return f"it left no {', '.join(missing)}"
    return None


def _changed(before: dict, inputs: str, params: dict, grows: tuple[str, ...]) -> bool:
    """Whether what the stage computed last time is stale: other inputs, or other parameters
    beyond those that only add settings."""

    def kept(p):
        return json.loads(json.dumps({k: v for k, v in p.items() if k not in grows}, default=str))

    return before.get("inputs") != inputs or kept(before.get("params", {})) != kept(params)


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sda_lib.workbench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default="toy")
    parser.add_argument(
        "--stages",
        type=lambda s: [x for x in s.split(",") if x],
        help=f"comma-separated subset of: {', '.join(STAGES)}",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run", default="default", help="run name: outputs/<dataset>/<run>")
    where.add_argument("--out", type=Path, help="run folder (instead of outputs/<dataset>/<run>)")
    add_param_option(parser, "notebook parameter, passed to every stage declaring it (or to STAGE only)")
    parser.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch/OpenMP threads in each notebook kernel (default 1: the small presets "
        "run fastest on one, and a shared machine does not thrash)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="stages run at once, each when the stages it reads are done (default: 1 on a GPU host, "
        "where they would share the device; else the CPU cores / --threads, at most 3)",
    )
    parser.add_argument(
        "--cell-timeout",
        type=int,
        metavar="SECONDS",
        help="fail a stage whose notebook cell runs longer than this (0: no bound; default: the profile's, "
        "a day under paper, 30 minutes under the CPU profiles)",
    )
    args = parser.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else default_jobs(args.threads)
    try:
        out = run_stages(
            args.dataset,
            args.stages,
            args.out,
            args.run,
            dict(args.params),
            args.force,
            threads=args.threads,
            jobs=jobs,
            cell_timeout=args.cell_timeout,
        )
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"all stages done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
