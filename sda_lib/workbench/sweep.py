"""Sweeps: a grid of runner parameters and seeds, each point a run folder, points side by side.

    python -m sda_lib.workbench.sweep --dataset toy --name steps --grid adapt.steps=[50,100,400] \\
        --grid seed=[0,1,2] --stages adapt,export,recommend -p recommend.models=['sasrec']

`--grid key=[values]` takes the keys of the runner's `-p` (`key` or `stage.key`); the points are all
combinations, the first key varying slowest. `seed` is the run's seed: every stage declaring `seed`
gets it, and the stages taking a list of seeds (05's and 06's `seeds`) get `[seed]` unless `-p seeds=`
says otherwise. `-p` fixes a parameter for every point. A point runs the stages named and every stage
they read, so each point folder is a complete run with its own report.

The sweep folder (`outputs/<dataset>/<name>/`, or `--out`):

    points/<point>/    the point's run folder, with point.json (parameters, state, error) and runner.log
    data/<key>/        the outputs root of the points whose data stage has the same parameters
    results.parquet    the tidy results of every point (and .csv); figures/, tables/ and report.html

Sharing without computing a stage twice. Each stage of a point gets a key: the code (sda_lib and the
notebooks), the stage's parameters after the profile, and the keys of the stages it reads
(sda_lib.workbench.run.STAGES), so two points share a stage exactly when the runner would compute the same
thing for both. The first point with a key computes it; a later point with that key waits for that
point, then gets a copy of what the stage left (its outputs, the folders it resumes from, its report
tables and figures, its executed notebook) and its record in stages.json, keyed for the new folder
(sda_lib.workbench.run.stage_key). The runner then finds the stage current by its own test (notebook, code,
parameters, inputs and output checksums) and skips it; a copy it does not find current it simply
runs again, so the sweep never has to be trusted. Copies, not links: a stage rerun in one point can
never change another point's files. Prepared data live outside run folders, in the outputs root, so
each distinct set of data parameters gets a root of its own (data/<key>/, the point runner's
SDA_OUTPUTS): points preparing different catalogues never replace each other's, and a sweep never
replaces the dataset's own data folder. Every root's `.cache` is the outputs root's, so the mini
trunk reads each image once for all of them.

Resuming: a point that finished the same stages on the same code is not run again; a failed or
interrupted one is (its runner skips the stages it finished), and so is one finished by code since
edited, as the runner would. Delete a point's folder to recompute it. `run_sweep(..., compute=False)`
gathers the results of the points finished so far, whatever code finished them, and runs nothing.

Failures: a point whose runner fails is recorded (point.json and a row of the results: the exit
status and the error's lines) and the other points go on; a point that would have copied a stage
from it computes the stage itself. The command exits 1 when a point failed, 2 on a bad grid or
parameter (found before anything runs).

Side by side: up to `--jobs` points at once, each a runner process (`python -m sda_lib.workbench.run`) with
`--threads` threads; a point started while nothing else is ready gets the free jobs for its stages.
In a notebook, `run_sweep` does the same with a live table of the points (sda_lib.utils.frontend).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils.exits import USAGE, command
from ..utils.frontend import live_widgets
from ..utils.io import atomic_path, read_json, slug, write_json
from ..utils.locks import folder_lock
from ..utils.params import add_param_option, parse_param
from ..utils.paths import outputs_root, run_dir
from . import run as runner
from .report import build_report, save_figure, save_table

log = logging.getLogger(__spec__.name)  # not __name__, which is "__main__" under python -m
SEED = "seed"  # the grid key of the run's seed
STATES = ("waiting", "running", "done", "failed")
ERROR_LINES = 20  # of a failed runner's output kept in point.json and the results


class SweepError(runner.UsageError):
    """A bad grid, stage or parameter: raised before any point runs."""


@dataclass(eq=False)  # a point is itself: compared by identity
class Point:
    """One combination of the grid: its run folder, the runner's parameters and each stage's key."""

    name: str
    grid: dict  # the grid's values at this point
    params: dict  # every -p the point's runner gets
    stages: list[str]
    keys: dict[str, str]  # stage -> what decides its outputs (see the module docstring)
    folder: Path
    root: Path  # the outputs root its runner sees (SDA_OUTPUTS)
    state: str = "waiting"
    current: bool = False  # finished (or failed) with this code and these parameters
    seconds: float | None = None  # wall time of its last run
    cpu_seconds: float | None = None  # CPU time of its last run: its runner and the runner's kernels
    returncode: int | None = None
    error: str | None = None
    waits_for: list[Point] = field(default_factory=list, repr=False)

    def record(self) -> dict:
        return {
            "point": self.name,
            "grid": self.grid,
            "params": self.params,
            "stages": self.stages,
            "keys": self.keys,
            "state": self.state,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "returncode": self.returncode,
            "error": self.error,
        }

    def save(self) -> None:
        write_json(self.folder / "point.json", self.record())


def parse_grid(items: list[str]) -> dict[str, list]:
    """{key: values} from `key=[v1, v2]` items (values as the runner's -p reads them)."""
    grid = {}
    for item in items:
        key, values = parse_param(item)
        if not isinstance(values, list) or not values:
            raise SweepError(f"--grid {item}: give the values as a non-empty list, e.g. --grid {key}=[1,2]")
        if key in grid:
            raise SweepError(f"--grid {key} is given twice; put all its values in one list")
        grid[key] = values
    return grid


def combinations(grids: dict | list[dict]) -> list[dict]:
    """Every combination of one grid ({key: values}), or of each of several in turn (each
    combination once): a study that varies one factor at a time is a list of grids."""
    seen, points = set(), []
    for grid in [grids] if isinstance(grids, dict) else grids:
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            text = json.dumps(point, sort_keys=True)
            if text not in seen:
                seen.add(text)
                points.append(point)
    return points


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """The library and the stage notebooks: what a finished point was computed with."""
    notebooks = [runner.NOTEBOOKS / stage.notebook for stage in runner.STAGES.values()]
    return _digest(runner.library_version(), [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in notebooks])


class Sweep:
    """A grid of runner points in one sweep folder (see the module docstring)."""

    def __init__(
        self,
        dataset: str,
        grid: dict | list[dict],
        stages: list[str] | None = None,
        params: dict | None = None,
        out: str | Path | None = None,
        name: str = "sweep",
        jobs: int = 1,
        threads: int = 1,
        cell_timeout: int | None = None,
    ):
        if jobs < 1 or threads < 1:
            raise SweepError(f"jobs and threads must be >= 1, got jobs={jobs}, threads={threads}")
        self.dataset, self.params = dataset, dict(params or {})
        self.jobs, self.threads, self.cell_timeout = jobs, threads, cell_timeout
        self.grid = [grid] if isinstance(grid, dict) else list(grid)
        if not any(self.grid):
            raise SweepError("the grid is empty: give at least one --grid key=[values]")
        runner.check_names(dataset, name if out is None else None, self.params)
        self.folder = Path(out if out is not None else run_dir(dataset, name)).resolve()
        self.stages = self._closure(stages)
        self.declared = {s: runner.notebook_parameters(s) for s in runner.STAGES}
        self.varied = [k for k in dict.fromkeys(k for g in self.grid for k in g) if k != SEED]
        code = code_version()
        self.points = [self._point(values, code) for values in combinations(self.grid)]
        first = {}  # stage key -> the first point computing it
        for point in self.points:
            for key in point.keys.values():
                producer = first.setdefault(key, point)
                if producer is not point and producer not in point.waits_for:
                    point.waits_for.append(producer)

    @staticmethod
    def _closure(stages: list[str] | None) -> list[str]:
        """The stages named and every stage they read, in STAGES order."""
        wanted = set(stages or runner.STAGES)
        unknown = wanted - set(runner.STAGES)
        if unknown:
            raise SweepError(f"unknown stage(s) {', '.join(sorted(unknown))}; stages are: {', '.join(runner.STAGES)}")
        todo = list(wanted)
        while todo:
            for read in runner.STAGES[todo.pop()].reads:
                if read not in wanted:
                    wanted.add(read)
                    todo.append(read)
        return [s for s in runner.STAGES if s in wanted]

    def _point(self, values: dict, code: str) -> Point:
        params = {**self.params, **values}
        if SEED in values and "seeds" not in params and any("seeds" in self.declared[s] for s in self.stages):
            params["seeds"] = [values[SEED]]
        runner.check_names(self.dataset, None, params)
        profile, given = runner.profiled_parameters(self.dataset, params, self.stages, self.declared)
        keys = {}
        for stage in self.stages:
            reads = [keys[r] for r in runner.STAGES[stage].reads]
            keys[stage] = _digest(code, self.dataset, profile, stage, given[stage], reads)
        label = "_".join(f"{k}={v}" for k, v in values.items())
        name = f"{slug(label)[:80]}-{_digest(self.dataset, params)[:6]}"
        root = self.folder / "data" / keys["data"][:12]
        point = Point(name, values, params, self.stages, keys, self.folder / "points" / name, root)
        before = read_json(point.folder / "point.json") or {}
        if before.get("state") in ("done", "failed"):
            point.state, point.seconds = before["state"], before.get("seconds")
            point.cpu_seconds = before.get("cpu_seconds")
            point.returncode, point.error = before.get("returncode"), before.get("error")
        point.current = before.get("keys") == keys  # else computed by other code: run() computes it again
        return point

    # ---- running ------------------------------------------------------------------------------

    def run(self, progress=None) -> pd.DataFrame:
        """Run every point not done yet, up to `jobs` at once; `progress(sweep)` is called whenever
        a point starts or ends. Writes and returns the tidy results (see `results`), the figure and
        the sweep's report."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.folder, "the sweep"):
            for point in self.points:
                if point.state == "failed" or not point.current:
                    point.state = "waiting"  # a failed point is tried again, a stale one recomputed
            progress = progress or (lambda sweep: None)
            progress(self)
            running: dict[str, tuple[Point, subprocess.Popen, float]] = {}
            try:
                while True:
                    ready = [p for p in self.points if p.state == "waiting" and self._ready(p)]
                    free = self.jobs - len(running)
                    starting = ready[:free]
                    for point in starting:
                        jobs = max(1, free // len(starting))
                        running[point.name] = (point, self._start(point, jobs), time.perf_counter())
                        progress(self)
                    if not running:
                        break
                    time.sleep(0.5)
                    for name, (point, process, start) in list(running.items()):
                        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                        if pid:
                            del running[name]
                            process.returncode = os.waitstatus_to_exitcode(status)
                            cpu = usage.ru_utime + usage.ru_stime  # the runner's and its reaped kernels'
                            self._finish(point, process.returncode, time.perf_counter() - start, cpu)
                            progress(self)
            finally:
                for _, process, _ in running.values():  # interrupted: let the runners checkpoint
                    process.terminate()
                for point, process, start in running.values():
                    process.wait()
                    self._finish(point, process.returncode, time.perf_counter() - start)
            return self.write()

    def _ready(self, point: Point) -> bool:
        return all(p.state in ("done", "failed") for p in point.waits_for)

    def _start(self, point: Point, jobs: int) -> subprocess.Popen:
        point.folder.mkdir(parents=True, exist_ok=True)
        point.root.mkdir(parents=True, exist_ok=True)
        cache = point.root / ".cache"
        if not cache.exists():  # the mini trunk's image features, shared with every other root
            (outputs_root() / ".cache").mkdir(parents=True, exist_ok=True)
            cache.symlink_to(outputs_root().resolve() / ".cache", target_is_directory=True)
        self._copy_shared_stages(point)
        point.state, point.error, point.returncode = "running", None, None
        point.save()
        command = [sys.executable, "-m", "sda_lib.workbench.run", "--dataset", self.dataset, "--out", str(point.folder)]
        command += ["--stages", ",".join(point.stages), "--threads", str(self.threads), "--jobs", str(jobs)]
        if self.cell_timeout is not None:
            command += ["--cell-timeout", str(self.cell_timeout)]
        for key, value in point.params.items():
            command += ["-p", f"{key}={value!r}"]
        env = {**os.environ, "SDA_OUTPUTS": str(point.root)}
        log_file = (point.folder / "runner.log").open("w")
        with log_file:
            return subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            )

    def _finish(self, point: Point, returncode: int, seconds: float, cpu: float | None = None) -> None:
        point.returncode, point.seconds, point.current = returncode, round(seconds, 1), True
        point.cpu_seconds = None if cpu is None else round(cpu, 1)
        point.state = "done" if returncode == 0 else "failed"
        point.error = None if returncode == 0 else _error_lines(point.folder / "runner.log")
        point.save()

    def _copy_shared_stages(self, point: Point) -> None:
        """Copy into `point` each stage it has not finished itself that another point (not running)
        finished with the same key."""
        own = read_json(point.folder / "stages.json") or {}
        others = [p for p in self.points if p is not point and p.current and p.state != "running"]
        for stage in point.stages:
            if stage in own:
                continue
            for other in others:
                record = (read_json(other.folder / "stages.json") or {}).get(stage)
                if other.keys.get(stage) == point.keys[stage] and record:
                    copy_stage(stage, other.folder, point.folder)
                    break

    # ---- results --------------------------------------------------------------------------------

    def results(self) -> pd.DataFrame:
        """One row per point x model x feature setting x seed x protocol x subset x metric of the
        recommend stage (05), with the point's grid values, its state, and each model's best epoch
        against its cap (`epochs`) and the epochs it ran; a point that failed is one row holding its
        error. Read from the point folders as they are (a point finished by other code included)."""
        frames = []
        for point in self.points:
            values = {k: v for k, v in point.grid.items() if k != SEED}
            head = {"point": point.name, "state": point.state, **{k: _cell(v) for k, v in values.items()}}
            table = point.folder / "recsys" / "results.parquet"
            if point.state == "done" and table.is_file():
                rows = pd.read_parquet(table)
                epochs = pd.DataFrame(
                    [
                        _epochs(point.folder, *k)
                        for k in rows[["model", "features", "seed"]].drop_duplicates().itertuples(index=False)
                    ]
                )
                rows = rows.merge(epochs, on=["model", "features", "seed"], how="left")
                frames.append(rows.assign(**head))
            else:
                frames.append(pd.DataFrame([{**head, "seed": point.grid.get(SEED), "error": point.error}]))
        results = pd.concat(frames, ignore_index=True)
        first = ["point", "state", *self.varied, "seed", "model", "features", "protocol", "subset", "metric", "value"]
        first = [c for c in first if c in results.columns]
        return results[first + [c for c in results.columns if c not in first]]

    def write(self) -> pd.DataFrame:
        """Write results.parquet / .csv, the figure, the points table and report.html."""
        results = self.results()
        for suffix, writer in ((".parquet", results.to_parquet), (".csv", results.to_csv)):
            with atomic_path(self.folder / f"results{suffix}") as tmp:
                writer(tmp, index=False)
        save_table(self.points_table(), self.folder, "00", "Points of the sweep")
        if "value" in results.columns and results["value"].notna().any():
            save_figure(figure(results, self.varied), self.folder, "00", "Metrics against the swept parameter")
        self.report()
        return results

    def report(self) -> Path:
        """report.html of the sweep folder: its tables and figures, and the first point's data card."""
        cards = [p.root / self.dataset / "data" for p in self.points if (p.root / self.dataset / "data").is_dir()]
        return build_report(self.folder, data_dir=cards[0] if cards else None)

    def points_table(self) -> pd.DataFrame:
        rows = [
            {
                "point": p.name,
                **{k: _cell(v) for k, v in p.grid.items()},
                "state": p.state,
                "seconds": p.seconds,
                "CPU seconds": p.cpu_seconds,
                "error": (p.error or "").splitlines()[0] if p.error else "",
            }
            for p in self.points
        ]
        table = pd.DataFrame(rows)
        table.attrs["notes"] = [
            f"grid: {self.grid}; fixed: {self.params or 'nothing'}; stages: {', '.join(self.stages)}",
            f"each point is a run folder under {self.folder / 'points'}",
        ]
        return table

    def summary(self) -> str:
        counts = {s: sum(p.state == s for p in self.points) for s in STATES}
        return ", ".join(f"{n} {s}" for s, n in counts.items() if n)

    def cpu_minutes(self) -> float:
        """CPU time of the points' last runs (runners and their kernels), in minutes."""
        return sum(p.cpu_seconds or 0 for p in self.points) / 60


def copy_stage(stage: str, source: Path, out: Path) -> None:
    """Copy what `stage` left in the run folder `source` into the run folder `out`, and its record
    in stages.json keyed for `out`, so a runner in `out` with the same parameters and inputs finds
    it current. Files outside `source` (the prepared data) are shared, not copied."""
    record = dict(read_json(source / "stages.json")[stage])
    params = {**record["params"], "out_dir": str(out)}
    spec = runner.STAGES[stage]
    full = {**runner.notebook_parameters(stage), **params}
    prefix = spec.notebook.split("_")[0]
    paths = [Path(p) for p in [*spec.outputs(full), *spec.resumes_from(full)] if not Path(p).is_absolute()]
    paths += [p.relative_to(source) for f in runner.REPORT_FILES for p in sorted(source.glob(f.format(prefix=prefix)))]
    paths.append(Path(spec.notebook))
    for relative in dict.fromkeys(paths):
        src, dst = source / relative, out / relative
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, symlinks=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    stages = read_json(out / "stages.json") or {}
    stages[stage] = {**record, "params": params, "key": runner.stage_key(record["inputs"], params)}
    write_json(out / "stages.json", stages)


def _epochs(folder: Path, model: str, features: str, seed) -> dict:
    config = read_json(folder / "recsys" / model / str(features) / f"seed{seed}" / "config.json") or {}
    return {
        "model": model,
        "features": features,
        "seed": seed,
        "best_epoch": config.get("best_epoch"),
        "epochs_run": config.get("epochs_run"),
        "epochs_cap": (config.get("train") or {}).get("epochs"),
    }


def _cell(value):
    """A grid value as a table cell: lists and dicts as their text."""
    return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)


def _error_lines(log_file: Path) -> str:
    """The runner's error message (from its first 'error:' line), else the end of its output."""
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    start = next((i for i, line in enumerate(lines) if line.startswith(("error:", "stopped:"))), None)
    kept = lines[start : start + ERROR_LINES] if start is not None else lines[-ERROR_LINES:]
    return "\n".join(kept) or "the runner exited without output"


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), 0.0
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def over_seeds(results: pd.DataFrame, varied: list[str], protocol: str = "sampled") -> pd.DataFrame:
    """Mean, 95% interval and count over seeds of each metric, per grid value, model and feature
    setting."""
    rows = results[(results["state"] == "done") & (results["protocol"] == protocol)]
    by = [*varied, "model", "features", "subset", "metric"]
    out = []
    for key, group in rows.groupby(by, dropna=False, sort=False):
        mean, half = interval(group["value"].to_numpy())
        out.append({**dict(zip(by, key)), "mean": mean, "ci95": half, "seeds": int(group["value"].notna().sum())})
    return pd.DataFrame(out)


def figure(results: pd.DataFrame, varied: list[str], metrics=("HR@10", "NDCG@10"), protocol: str = "sampled"):
    """Each metric (overall and tail) against the first swept parameter: mean and 95% interval over
    seeds, one line per feature setting (ID, zero-shot, SDA, ...), one column per model; the other
    swept parameters, if any, as the line's dash."""
    import plotly.express as px

    table = over_seeds(results, varied, protocol)
    table = table[table["metric"].isin(metrics)].copy()
    table["measure"] = table["metric"] + " " + table["subset"]
    x = varied[0] if varied else "point"
    if not varied:
        table["point"] = "all"
    others = varied[1:]
    if others:
        table["other"] = table[others].astype(str).agg(", ".join, axis=1)
    table[x] = table[x].astype(str)
    fig = px.line(
        table,
        x=x,
        y="mean",
        error_y="ci95",
        color="features",
        line_dash="other" if others else None,
        facet_col="model",
        facet_row="measure",
        markers=True,
        hover_data=["seeds"],
        title=f"Metrics against {x} ({protocol} protocol; mean and 95% interval over seeds)",
    )
    fig.update_yaxes(matches=None, title_text="")
    fig.update_layout(height=220 * table["measure"].nunique() + 120)
    return fig


# ---- the notebook's entry point and its progress view ------------------------------------------


class Progress:
    """Which points run and which are done: a table that updates in place where widgets are live
    (JupyterLab, sda_lib.utils.frontend), else one log line per change (the command line, headless runs)."""

    def __init__(self):
        self.widget, self.last = None, {}
        if live_widgets():
            import ipywidgets
            from IPython.display import display

            self.widget = ipywidgets.HTML()
            display(self.widget)

    def __call__(self, sweep: Sweep) -> None:
        if self.widget is not None:
            rows = "".join(
                f"<tr><td>{p.name}</td><td>{p.state}</td><td>{'' if p.seconds is None else round(p.seconds)}</td></tr>"
                for p in sweep.points
            )
            self.widget.value = (
                f"<b>{sweep.summary()}</b><table><tr><th>point</th><th>state</th><th>seconds</th></tr>{rows}</table>"
            )
            return
        if not self.last:
            log.info(f"sweep of {len(sweep.points)} points in {sweep.folder}: {sweep.summary()}")
        for point in sweep.points:
            if self.last and self.last.get(point.name) != point.state:
                took = f" in {point.seconds:.0f} s" if point.state in ("done", "failed") and point.seconds else ""
                log.info(f"{point.name}: {point.state}{took} ({sweep.summary()})")
        self.last = {p.name: p.state for p in sweep.points}


def run_sweep(
    dataset: str,
    grid: dict | list[dict],
    stages: list[str] | None = None,
    params: dict | None = None,
    name: str = "sweep",
    out: str | Path | None = None,
    jobs: int | None = None,
    threads: int = 1,
    cell_timeout: int | None = None,
    compute: bool = True,
) -> Sweep:
    """Run a sweep from a notebook, showing its progress (see Progress), and return it: its
    `results()`, `folder` and points. `grid` is {key: values} or a list of such grids (each
    combination of each, once). `compute=False` only gathers what the points finished so far
    (results, figure, report), even with code edited since, and runs nothing."""
    sweep = Sweep(
        dataset,
        grid,
        stages,
        params,
        out,
        name,
        jobs or runner.default_jobs(threads),
        threads,
        cell_timeout,
    )
    if compute:
        sweep.run(Progress())
    else:
        sweep.write()
    return sweep


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sda_lib.workbench.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", default="toy")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="[STAGE.]KEY=[V1,V2,...]",
        help="a swept parameter and its values; several --grid give every combination",
    )
    parser.add_argument(
        "--stages",
        type=lambda s: [x for x in s.split(",") if x],
        help=f"comma-separated subset of: {', '.join(runner.STAGES)} (and the stages they read)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--name", default="sweep", help="sweep name: outputs/<dataset>/<name>")
    where.add_argument("--out", type=Path, help="sweep folder (instead of outputs/<dataset>/<name>)")
    add_param_option(parser, "a parameter every point gets, as the runner's -p")
    parser.add_argument("--jobs", type=int, help="points at once (default: the runner's default jobs)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per notebook kernel")
    parser.add_argument("--cell-timeout", type=int, metavar="SECONDS", help="the runner's --cell-timeout")
    args = parser.parse_args(argv)
    try:
        sweep = Sweep(
            args.dataset,
            parse_grid(args.grid),
            args.stages,
            dict(args.params),
            args.out,
            args.name,
            args.jobs if args.jobs is not None else runner.default_jobs(args.threads),
            args.threads,
            args.cell_timeout,
        )
    except runner.UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE
    sweep.run(Progress())
    failed = [p for p in sweep.points if p.state == "failed"]
    for point in failed:
        print(f"error: point {point.name} failed (exit {point.returncode}):\n{point.error}", file=sys.stderr)
    print(f"sweep {sweep.summary()}: {sweep.folder / 'results.parquet'}, {sweep.folder / 'report.html'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
