r"""mmrec-parity: the workbench's VBPR and SLMRec beside MMRec's, on one exported split and one
feature table, over several seeds, both scored by one masking rule.

MMRec (enoche/MMRec) is not on PyPI and is never copied into the project: it runs from a checkout
named by $MMREC_PATH, with the interpreter of its own virtualenv ($MMREC_PYTHON, default
~/mmrec-venv/bin/python). Set it up once (its code needs numpy < 1.24, which still has `np.float`):

    git clone https://github.com/enoche/MMRec ~/MMRec
    python3 -m venv ~/mmrec-venv && ~/mmrec-venv/bin/pip install torch==2.13.0 && \
      ~/mmrec-venv/bin/pip install "numpy<1.24" "scipy<1.12" "pandas<2" pyyaml lmdb pillow matplotlib \
      scikit-learn
    export MMREC_PATH=~/MMRec

MMRec's modules import torch_scatter and torchvision (compiled extensions that must match the torch
build) without calling them for these models; where one does not import, the runner puts an empty
stand-in module in its place (MMRec's files stay unchanged).

Protocol: the dataset exported by `sda_lib.formats.mmrec` (the workbench's leave-one-out split as
x_label, the feature table's text and image parts); MMRec's default settings for both sides: width
64, batch 2048, Adam, up to 1000 epochs, early stopping on validation Recall@20 (= HR@20 with one
target) after 20 epochs without improvement beyond the first (MMRec stops when 21 in a row fail;
ours with patience 21), test at the best validation epoch. Fixed values where MMRec searches a grid:
VBPR reg_weight 0.1, SLMRec learning rate 1e-4, ssl_temp 0.5, ssl_alpha 1.0 (the workbench's
defaults). Masking: both scored by MMRec's rule, the user's training items excluded and the
validation item left among the candidates; our test is also given by the workbench's rule (every
earlier item excluded), on the same weights.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .core import Measurement, Options

MMREC_PATH = os.environ.get("MMREC_PATH", "")
MMREC_PYTHON = os.environ.get("MMREC_PYTHON", str(Path.home() / "mmrec-venv" / "bin" / "python"))
MODELS = {"vbpr": "VBPR", "slmrec": "SLMRec"}
SEEDS = 5  # --repeats: seeds 0..n-1
WIDTH, BATCH, EPOCHS, STOPPING_STEP = 64, 2048, 1000, 20  # MMRec overall.yaml, VBPR.yaml / SLMRec.yaml
# Where MMRec searches a grid, one value (the workbench's default), on both sides
GRID_CHOICES = {
    "VBPR": {"reg_weight": 0.1},
    "SLMRec": {"learning_rate": 1e-4, "ssl_temp": 0.5, "ssl_alpha": 1.0, "reg": 1e-4},
}
METRICS = ("Recall@10", "NDCG@10", "Recall@20", "NDCG@20")
TARGET = 0.02  # within 2% (or within the seeds' spread) on Recall@20 and NDCG@20

# Runs in MMRec's virtualenv with MMRec's src/ as working directory: imports nothing from this
# project. Builds MMRec's own config, dataset, loaders, model and trainer as its quick_start does,
# for one setting, and reports the best validation result, the test result at that epoch and the
# epoch times its trainer logs.
_RUNNER = r"""
import json, logging, re, sys, types
sys.path.insert(0, ".")
def stand_in(name, *functions):
    # a module MMRec imports but never calls on this path, when it is not installed
    try:
        __import__(name)
    except Exception:
        module = types.ModuleType(name)
        def absent(*args, **kwargs):
            raise NotImplementedError(f"{name} stand-in")
        for function in functions:
            setattr(module, function, absent)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
stand_in("torch_scatter", "scatter", "scatter_add")
stand_in("torchvision")
stand_in("torchvision.transforms", "Compose", "Normalize", "ToTensor")
stand_in("torchvision.transforms.functional", "pad", "resize")
args = json.loads(sys.stdin.read())
import torch
torch.set_num_threads(args["threads"])
from utils.configurator import Config
from utils.dataset import RecDataset
from utils.dataloader import TrainDataLoader, EvalDataLoader
from utils.utils import init_seed, get_model, get_trainer

lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)

config = Config(args["model"], args["name"], args["config"])
dataset = RecDataset(config)
train, valid, test = dataset.split()
for part in (dataset, train, valid, test):  # quick_start logs them; str() also sets the counts the loaders read
    logging.getLogger().info(str(part))
train_data = TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True)
valid_data = EvalDataLoader(config, valid, additional_dataset=train, batch_size=config["eval_batch_size"])
test_data = EvalDataLoader(config, test, additional_dataset=train, batch_size=config["eval_batch_size"])
init_seed(config["seed"])
train_data.pretrain_setup()
model = get_model(config["model"])(config, train_data).to(config["device"])
trainer = get_trainer()(config, model)
_, best_valid, best_test = trainer.fit(train_data, valid_data=valid_data, test_data=test_data, saved=False)
train_s = [float(m) for m in re.findall(r"training \[time: ([0-9.]+)s", "\n".join(lines))]
eval_s = [float(m) for m in re.findall(r"evaluating \[time: ([0-9.]+)s", "\n".join(lines))]
scores = [float(m) for m in re.findall(r"valid_score: ([0-9.]+)", "\n".join(lines))]
print(json.dumps({"valid": best_valid, "test": best_test, "train_seconds": train_s, "valid_seconds": eval_s,
                  "valid_scores": scores, "users": dataset.get_user_num(), "items": dataset.get_item_num()}))
"""


def mmrec_run(
    folder: Path,
    model: str,
    seed: int,
    threads: int = 1,
    checkout: str | Path = MMREC_PATH,
    python: str | Path = MMREC_PYTHON,
) -> dict:
    """MMRec's `model` ("VBPR" or "SLMRec") trained on the MMRec folder `folder` (written by
    sda_lib.formats.mmrec) with seed `seed`; MMRec's metrics (lower-case keys, e.g. "recall@20")."""
    name = folder.name
    config = {
        "data_path": str(folder.parent) + os.sep,
        "USER_ID_FIELD": "userID",
        "ITEM_ID_FIELD": "itemID",
        "TIME_FIELD": "timestamp",
        "inter_file_name": f"{name}.inter",
        "vision_feature_file": "image_feat.npy",
        "text_feature_file": "text_feat.npy",
        "filter_out_cod_start_users": True,
        "field_separator": "\t",
        "use_gpu": False,
        "seed": seed,
        "embedding_size": WIDTH,
        "recdim": WIDTH,
        "train_batch_size": BATCH,
        "epochs": EPOCHS,
        "stopping_step": STOPPING_STEP,
        "save_recommended_topk": False,
        **GRID_CHOICES[model],
    }
    done = subprocess.run(
        [str(python), "-c", _RUNNER],
        input=json.dumps({"model": model, "name": name, "config": config, "threads": threads}),
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(checkout) / "src",
        env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"MMRec {model} failed (exit {done.returncode}); its traceback is printed above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours_run(prepared, table, model: str, seed: int, threads: int = 1, **params) -> dict:
    """The workbench's `model` under the protocol above (`params` go to the model, e.g. VBPR's
    `negatives`); test metrics by MMRec's masking rule and by the workbench's."""
    import torch

    from sda_lib.recsys import InteractionData, evaluate, summarize
    from sda_lib.recsys.experiment import build_model, model_train_config
    from sda_lib.recsys.train import TrainConfig, fit, seed_everything

    torch.set_num_threads(threads)
    data = InteractionData.from_prepared(prepared)
    seed_everything(seed)
    recommender = build_model(model, data, table, "id+features", dim=WIDTH, **params)
    config = model_train_config(
        model,
        TrainConfig(
            epochs=EPOCHS, patience=STOPPING_STEP + 1, batch_size=BATCH, seed=seed, threads=threads, progress=False
        ),
    )
    start = time.perf_counter()
    result = fit(recommender, data, config)
    wall = time.perf_counter() - start
    history = result.history
    ours_rule = summarize(evaluate(recommender, data, "test", "full"))["overall"]
    return {
        "test": _metrics(_ranks_masking_train(recommender, data)),
        "test_workbench_rule": {m: ours_rule[m.replace("Recall", "HR")] for m in METRICS},
        "valid": {"Recall@20": result.best_score},
        "best_epoch": result.best_epoch,
        "epochs": len(history),
        "train_seconds": history["seconds"].tolist(),
        "wall_seconds": wall,
    }


def _ranks_masking_train(model, data, block: int = 1024) -> np.ndarray:
    """0-based test ranks by MMRec's rule: only the user's training items excluded."""
    import torch

    from sda_lib.recsys.evaluate import full_ranks

    model.eval()
    users, items = data.train_pairs()
    bounds = np.searchsorted(users, np.arange(0, data.n_users + block, block))
    targets = torch.from_numpy(data.targets("test"))
    out = []
    with torch.no_grad():
        tables = model.tables()
        for b, start in enumerate(range(0, data.n_users, block)):
            stop = min(start + block, data.n_users)
            rows = torch.arange(start, stop)
            vectors = model.user_vectors(rows, None, tables)
            pairs = slice(bounds[b], bounds[b + 1])
            masked_users = torch.from_numpy(users[pairs] - start)
            out.append(
                full_ranks(vectors, tables.items, targets[start:stop], masked_users, torch.from_numpy(items[pairs]))
            )
    return torch.cat(out).numpy()


def _metrics(ranks: np.ndarray) -> dict[str, float]:
    hit = {k: ranks < k for k in (10, 20)}
    gain = 1.0 / np.log2(ranks + 2.0)
    return {
        "Recall@10": float(hit[10].mean()),
        "NDCG@10": float(np.where(hit[10], gain, 0).mean()),
        "Recall@20": float(hit[20].mean()),
        "NDCG@20": float(np.where(hit[20], gain, 0).mean()),
    }


def _theirs(found: dict) -> dict:
    return {
        "test": {m: found["test"][m.lower()] for m in METRICS},
        "valid": {"Recall@20": found["valid"]["recall@20"]},
        "best_epoch": int(np.argmax(found["valid_scores"])) + 1 if found["valid_scores"] else 0,
        "epochs": len(found["train_seconds"]),
        "train_seconds": found["train_seconds"],
    }


def mmrec_parity(options: Options) -> Measurement:
    """Our VBPR and SLMRec beside MMRec's on one exported split and feature table, 5 seeds (target: within 2%).

    --dataset (default toy) and --features (a table under outputs/<dataset>/default/embeddings/,
    default sda); --repeats seeds; MMRec from $MMREC_PATH (skipped with the set-up steps when absent)."""
    from sda_lib.data import load_prepared, prepare_dataset
    from sda_lib.formats import feature_folder
    from sda_lib.formats.mmrec import write_mmrec
    from sda_lib.recsys.base import resolve_features

    if not MMREC_PATH or not (Path(MMREC_PATH) / "src" / "main.py").is_file() or not Path(MMREC_PYTHON).exists():
        note = (
            f"MMRec not found (MMREC_PATH={MMREC_PATH or 'unset'}, MMREC_PYTHON={MMREC_PYTHON}): set it up with the "
            "commands in benchmarks/mmrec.py"
        )
        return Measurement([], {"skipped": note}, "skipped: MMRec absent", [note])
    prepared = load_prepared(prepare_dataset(options.dataset))  # reused when current
    features = feature_folder(options.dataset, options.features)
    if not (features / "manifest.json").is_file():
        note = (
            f"no feature table {features}: make it with `python -m sda_lib.workbench.run --dataset {options.dataset} "
            f"--stages data,adapt,export` (or name another with --features)"
        )
        return Measurement([], {"skipped": note}, "skipped: no feature table", [note])
    table = resolve_features(prepared, features)
    seeds = list(range(options.repeats or SEEDS))
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mmrec-parity-") as tmp:
        folder = write_mmrec(prepared, table, Path(tmp), options.dataset)
        for model, theirs_name in MODELS.items():
            for seed in seeds:
                with ThreadPoolExecutor(1) as pool:  # MMRec's process on one core while ours trains on the other
                    peer = pool.submit(mmrec_run, folder, theirs_name, seed)
                    runs.setdefault(("workbench", model), []).append(ours_run(prepared, table, model, seed))
                    if model == "vbpr":
                        variant = ours_run(prepared, table, model, seed, negatives="all")
                        runs.setdefault(("workbench, negatives from all items", model), []).append(variant)
                    runs.setdefault(("MMRec", model), []).append(_theirs(peer.result()))
                done = {name: found[-1]["test"] for (name, m), found in runs.items() if m == model}
                print(json.dumps({"finished": model, "seed": seed, "test": done}), flush=True)
    return _summary(options, table, runs, seeds)


def _summary(options: Options, table, runs: dict, seeds: list[int]) -> Measurement:
    rows, values = [], {"dataset": options.dataset, "features": options.features, "seeds": seeds, "runs": {}}
    status = "PASS"
    for (library, model), found in runs.items():
        row = {"model": model, "library": library}
        for m in METRICS:
            scores = [f["test"][m] for f in found]
            row[m] = f"{statistics.mean(scores):.4f} ± {statistics.stdev(scores) if len(scores) > 1 else 0:.4f}"
        row["best epoch"] = statistics.median(f["best_epoch"] for f in found)
        row["s / epoch"] = round(statistics.median(s for f in found for s in f["train_seconds"]), 3)
        if "test_workbench_rule" in found[0]:
            row["NDCG@10 (workbench mask)"] = round(
                statistics.mean(f["test_workbench_rule"]["NDCG@10"] for f in found), 4
            )
        rows.append(row)
        values["runs"][f"{library}/{model}"] = found
    verdicts = {}
    for model in MODELS:
        ours, theirs = runs[("workbench", model)], runs[("MMRec", model)]
        for m in ("Recall@20", "NDCG@20", "NDCG@10"):
            a, b = np.array([f["test"][m] for f in ours]), np.array([f["test"][m] for f in theirs])
            gap = a.mean() / b.mean() - 1
            spread = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) / b.mean() if len(a) > 1 else 0.0
            ok = abs(gap) <= TARGET or abs(gap) <= 2 * spread
            verdicts[f"{model} {m}"] = {
                "difference": round(float(gap), 4),
                "two_standard_errors": round(float(2 * spread), 4),
                "within": bool(ok),
            }
            if m != "NDCG@10" and not ok:
                status = "MISSED"
        speed = statistics.median(s for f in theirs for s in f["train_seconds"]) / statistics.median(
            s for f in ours for s in f["train_seconds"]
        )
        verdicts[f"{model} epoch speed-up"] = round(speed, 2)
    values |= {"verdicts": verdicts, "status": status, "target": TARGET}
    headline = (
        "; ".join(
            f"{model}: Recall@20 {verdicts[f'{model} Recall@20']['difference']:+.1%}, NDCG@20 "
            f"{verdicts[f'{model} NDCG@20']['difference']:+.1%}"
            for model in MODELS
        )
        + f" (ours vs MMRec, {len(seeds)} seeds): {status}"
    )
    d_text, d_image = table.split_dims
    notes = [
        f"{options.dataset}, feature table {options.features} ({d_text} text + {d_image} image columns); "
        f"seeds {seeds}; "
        f"width {WIDTH}, batch {BATCH}, up to {EPOCHS} epochs, stop after {STOPPING_STEP + 1} "
        "validations without a better Recall@20; one torch thread each, MMRec's process and ours side by side",
        "test metrics by MMRec's rule (training items masked, the validation item among the candidates), mean ± "
        "standard deviation over seeds; 'workbench mask' also excludes the validation item (same weights)",
        "within: |difference| <= 2% or <= two standard errors of the difference of the means",
        "our VBPR draws training negatives from the items that occur in training, as MMRec does; 'workbench, "
        "negatives from all items': also from items no user trained on (VBPR's negatives='all')",
    ]
    return Measurement(rows, values, headline, notes)
