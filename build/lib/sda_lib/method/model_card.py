"""Model cards for saved adapters, as the Hugging Face Hub reads them: a README.md beside the
weights whose YAML header (huggingface_hub's ModelCardData) names the base model, the library,
the dataset and tags, and carries the run's measured figures as `model-index` results.

The card is written when the adapter is saved (training record: steps, final loss and
temperature) and refreshed with the run's measurements once they exist (`refresh_model_cards`,
called when a run's report is built): the alignment table of stage 08 (the adapted row) and the
recommendation results of stage 05 for the features exported with this adapter (test split, full
ranking, overall; mean over seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import __version__
from ..utils.io import atomic_path, read_json

CARD = "README.md"
ALIGNMENT_TABLE = "tables/08-alignment-zero-shot-vs-adapted.csv"  # under the run folder
RESULTS = "recsys/results.parquet"
ALIGNMENT_METRICS = ("t2i_recall@10", "matched_cosine_centred", "cosine_gap")
RECOMMENDATION_METRICS = ("HR@10", "NDCG@10")

_BODY = """
# {name}

A {kind} adapter of `{base}` trained by sda-workbench {version}
to embed items for multimodal recommendation (SDA: structural and disentangled adaptation of LVLMs,
arXiv 2512.06883), on dataset `{dataset}`.

## Use

```python
from sda_lib.method.adapters import from_pretrained
backbone = from_pretrained("{where}")  # a hub id or this folder
```
{peft}
## Training

{training}

## Measured in the run that trained it

{measured}
"""


def write_model_card(
    folder: str | Path,
    backbone_id: str,
    kind: str,
    dataset: str | None = None,
    training: dict | None = None,
    alignment: dict[str, float] | None = None,
    recommendation: pd.DataFrame | None = None,
) -> Path:
    """Write `folder/README.md` for the adapter saved there (atomically); returns its path.
    `recommendation`: rows of model, metric, value (test, full ranking, overall)."""
    folder = Path(folder)
    name = f"{dataset or 'sda'}-{kind}-adapter"
    results = [
        EvalResult(
            task_type="item-embedding-alignment",
            dataset_type=dataset or "unknown",
            dataset_name=dataset or "unknown",
            metric_type=metric,
            metric_value=float(value),
        )
        for metric, value in (alignment or {}).items()
    ]
    for row in (recommendation if recommendation is not None else pd.DataFrame()).itertuples():
        results.append(
            EvalResult(
                task_type="recommendation",
                dataset_type=dataset or "unknown",
                dataset_name=dataset or "unknown",
                metric_type=f"{row.model} {row.metric}",
                metric_value=float(row.value),
                task_name=f"{row.model} on the adapted features (test, full ranking)",
            )
        )
    data = ModelCardData(
        base_model=backbone_id,
        library_name="peft" if kind == "lora" else "sda-workbench",
        datasets=[dataset] if dataset else None,
        tags=["sda-workbench", "multimodal-recommendation", f"adapter-{kind}"],
        model_name=name,
        eval_results=results or None,
    )
    measured = []
    if alignment:
        measured.append(
            "Alignment of the adapted embeddings (stage 08):\n\n" + _table(pd.Series(alignment).to_frame("value"))
        )
    if recommendation is not None and len(recommendation):
        wide = recommendation.pivot_table(index="model", columns="metric", values="value")
        measured.append(
            "Recommenders on the exported features (stage 05; test, full ranking, mean over seeds):\n\n" + _table(wide)
        )
    body = _BODY.format(
        name=name,
        kind={"moda": "MoDA", "independent": "per-modality LoRA", "lora": "LoRA"}.get(kind, kind),
        base=backbone_id,
        version=__version__,
        dataset=dataset or "unknown",
        where=str(folder),
        peft="\nA stock peft LoRA: `PeftModel.from_pretrained(base_model, folder)` opens it too.\n"
        if kind == "lora"
        else "",
        training=_training(training),
        measured="\n\n".join(measured)
        or "Not yet measured: the run's alignment (08) and recommendation (05) stages add them.",
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = folder / CARD
    with atomic_path(path) as tmp:
        tmp.write_text(str(card))
    return path


def refresh_model_cards(run_dir: str | Path, kind_of: Callable[[Path], str]) -> list[Path]:
    """Rewrite the card of every adapter of the run in `run_dir` (adapters/<name>/adapter) with the
    figures the run has measured so far; returns the cards written. `kind_of` names the adapter kind
    a folder holds (sda_lib.method.adapters.saved_kind, which writes these cards: passed in, not
    imported, so the two modules do not import each other)."""
    run_dir = Path(run_dir)
    written = []
    for record_path in sorted(run_dir.glob("adapters/*/adapt.json")):
        folder = record_path.parent / "adapter"
        record = read_json(record_path)
        if record is None or not folder.is_dir():
            continue
        try:
            kind = kind_of(folder)
        except FileNotFoundError:
            continue
        label = record_path.parent.name
        written.append(
            write_model_card(
                folder,
                record["backbone"],
                kind,
                record.get("dataset"),
                record,
                _alignment(run_dir) if label == _exported_label(run_dir) else None,
                _recommendation(run_dir, label),
            )
        )
    return written


def _exported_label(run_dir: Path) -> str | None:
    """The adapter whose features stage 08 compared (its adapter_name parameter)."""
    stages = read_json(run_dir / "stages.json") or {}
    return (stages.get("alignment") or {}).get("params", {}).get("adapter_name", "sda")


def _alignment(run_dir: Path) -> dict[str, float] | None:
    path = run_dir / ALIGNMENT_TABLE
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    table = table.set_index(table.columns[0])
    if "adapted" not in table.index:
        return None
    return {m: float(table.loc["adapted", m]) for m in ALIGNMENT_METRICS if m in table.columns}


def _recommendation(run_dir: Path, label: str) -> pd.DataFrame | None:
    path = run_dir / RESULTS
    if not path.is_file():
        return None
    results = pd.read_parquet(path)
    chosen = results[
        (results["features"] == label)
        & (results["protocol"] == "full")
        & (results["subset"] == "overall")
        & results["metric"].isin(RECOMMENDATION_METRICS)
    ]
    return chosen.groupby(["model", "metric"], as_index=False)["value"].mean() if len(chosen) else None


def _training(record: dict | None) -> str:
    if not record:
        return "No training record."
    config = record.get("config", {})
    lines = {
        "steps": config.get("steps"),
        "adapter": f"{config.get('adapter')}, rank {config.get('r')}, {config.get('experts')} experts",
        "final loss": record.get("final_loss"),
        "final temperature": record.get("final_tau"),
        "seconds": record.get("seconds"),
    }
    return "\n".join(f"- {k}: {v}" for k, v in lines.items() if v is not None)


def _table(frame: pd.DataFrame) -> str:
    """A markdown table (pandas' to_markdown needs an extra package)."""
    header = ["", *map(str, frame.columns)]
    rows = [
        [str(i), *(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row)]
        for i, row in zip(frame.index, frame.to_numpy())
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
