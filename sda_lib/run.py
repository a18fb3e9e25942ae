"""The stage runner: execute the stage notebooks in order with papermill.

    python -m sda_lib.run --dataset toy [--stages data,adapt] [--run NAME | --out DIR] [-p key=value ...]

Executed copies land in `outputs/<dataset>/<run>/`, with `report.html` built from what the
stages saved (see sda_lib.report). A stage that already completed with the same
parameters and the same notebook is skipped; once a stage runs, every later stage runs too, since
its inputs may have changed. The first failing stage stops the run, naming the notebook and cell.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .io import write_json
from .paths import REPO_ROOT, run_dir
from .report import build_report

NOTEBOOKS = REPO_ROOT / "notebooks"
STAGES: dict[str, str] = {
    "data": "01_data.ipynb",
    "zero_shot": "02_zero_shot.ipynb",
    "adapt": "03_adapt.ipynb",
    "export": "04_export.ipynb",
    "recommend": "05_recommend.ipynb",
    "ablations": "06_ablations.ipynb",
    "gradient_conflict": "07_gradient_conflict.ipynb",
    "alignment": "08_alignment.ipynb",
}


class StageFailed(RuntimeError):
    pass


def run_stages(dataset: str, stages: list[str] | None = None, out: Path | None = None, run: str = "default",
               params: dict | None = None, force: bool = False, progress: bool = True, threads: int = 1) -> Path:
    """Run `stages` (default: all) for `dataset`; returns the run folder. Each notebook kernel
    runs with `threads` torch/OpenMP threads (the offline presets run fastest on one)."""
    import papermill as pm

    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the papermill kernels
    stages = list(STAGES) if not stages else stages
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; stages are: {', '.join(STAGES)}")
    out = Path(out) if out is not None else run_dir(dataset, run)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "stages.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    params = dict(params or {})
    declared = {s: set(pm.inspect_notebook(str(NOTEBOOKS / STAGES[s]))) for s in stages}
    unused = [k for k in params if not any(k in d for d in declared.values())]
    if unused:
        raise SystemExit(f"parameter(s) {unused} are declared by none of the stages {stages}")

    rerun = force
    for i, stage in enumerate(stages, 1):
        notebook = NOTEBOOKS / STAGES[stage]
        stage_params = {"dataset": dataset, "out_dir": str(out),
                        **{k: v for k, v in params.items() if k in declared[stage]}}
        key = _stage_key(notebook, stage_params)
        executed = out / notebook.name
        if not rerun and record.get(stage, {}).get("key") == key and executed.exists():
            print(f"[{i}/{len(stages)}] {stage}: up to date, skipped ({executed})")
            continue
        rerun = True
        print(f"[{i}/{len(stages)}] {stage}: running {notebook.relative_to(REPO_ROOT)}", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(notebook), str(executed), parameters=stage_params, cwd=str(NOTEBOOKS),
                                progress_bar=progress, kernel_name="python3")
        except pm.PapermillExecutionError as err:
            first_line = next((ln for ln in err.source.splitlines() if ln.strip()), "")
            raise StageFailed(
                f"stage {stage!r} failed in {notebook.relative_to(REPO_ROOT)}, in the cell starting "
                f"{first_line!r} (execution {err.exec_count}): {err.ename}: {err.evalue}\n"
                f"  the executed copy with the full traceback: {executed}"
            ) from None
        seconds = time.perf_counter() - start
        record[stage] = {"key": key, "params": stage_params, "seconds": round(seconds, 1),
                         "completed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        write_json(record_path, record)
        print(f"[{i}/{len(stages)}] {stage}: done in {seconds:.1f} s", flush=True)
    report = build_report(out)
    print(f"report: {report}")
    return out


def _stage_key(notebook: Path, params: dict) -> str:
    h = hashlib.sha256(notebook.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:16]


def parse_param(text: str) -> tuple[str, object]:
    """`key=value`, the value read as a Python literal when it is one (3, 0.1, True, None), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"-p expects key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sda_lib.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--stages", type=lambda s: [x for x in s.split(",") if x],
                        help=f"comma-separated subset of: {', '.join(STAGES)}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run", default="default", help="run name: outputs/<dataset>/<run>")
    where.add_argument("--out", type=Path, help="run folder (instead of outputs/<dataset>/<run>)")
    parser.add_argument("-p", dest="params", action="append", type=parse_param, default=[],
                        metavar="KEY=VALUE", help="notebook parameter, passed to every stage declaring it")
    parser.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/OpenMP threads in each notebook kernel (default 1: the small presets "
                             "run fastest on one, and a shared machine does not thrash)")
    args = parser.parse_args(argv)
    try:
        out = run_stages(args.dataset, args.stages, args.out, args.run, dict(args.params), args.force,
                         threads=args.threads)
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"all stages done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
