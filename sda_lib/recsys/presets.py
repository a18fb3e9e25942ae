"""Named recommender settings: model parameters per model, the item representation used with
features, and the training configuration, so a notebook or the runner picks a whole bundle by name
(`recsys_preset="authors"`).

- "quick": small, short runs for toy data and CI (the notebooks' defaults).
- "s3rec": SASRec as S3-Rec fine-tuned it for its published full-ranking table (RUCAIBox/CIKM2020-S3Rec,
  first commit e6c774d: run_finetune.py, trainers.py, utils.py, datasets.py).
- "s3rec-sampled": the same model selected as S3-Rec's run_finetune_sample.py selects it, for its
  99-negative sampled table.
- "authors": SASRec and BERT4Rec as the SDA authors ran them on the LVLM features (RaoZhongtao/SDA
  main.py, utils/argument.py, models/Adapter.py, models/LLMEmb.py and experiments/*/scft/CAMEL_qwen.bash;
  the backbones and data generators they import are liuqidong07/LLMEmb's), and VBPR and SLMRec as
  the first author's MMRec fork ran them (RaoZhongtao/MMRec 854e5a7: src/configs/overall.yaml,
  model/VBPR.yaml, model/SLMRec.yaml): each model its own training (`Preset.training(model)`) and
  SLMRec its recorded picks per dataset (`Preset.params(model, dataset)`).

Each value's source is given beside it. Departures from a source are named in docs/FIDELITY.md.

The authors' alignment loss needs the item table of an ID model trained first with the same
settings (their `--do_emb` files itm_emb_sasrec_seq_128.pkl, itm_emb_bert4rec_128.pkl):

    table = pretrain_id_items(dataset, "sasrec", out=folder)
    params = get_preset("authors").params("sasrec", align_items=str(table), align_weight=0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..data import load_prepared
from ..utils.choices import check_choice
from ..utils.io import atomic_path
from . import bert4rec, sasrec  # noqa: F401  (they register the sequential models)
from .base import RECOMMENDERS, InteractionData, ItemReprName
from .sequential import SequentialRecommender
from .train import TrainConfig, fit, seed_everything

S3REC_MONITOR = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")


@dataclass(frozen=True)
class Preset:
    name: str
    models: dict[str, dict]  # model name -> constructor parameters
    train: TrainConfig
    # model -> repr with a feature table; else the default
    item_repr: dict[str, ItemReprName] = field(default_factory=dict)
    align_weights: tuple[float, ...] = ()  # alignment-loss weights the source swept, if any
    notes: str = ""
    model_train: dict[str, TrainConfig] = field(default_factory=dict)  # models trained otherwise than `train`
    dataset_params: dict[str, dict[str, dict]] = field(default_factory=dict)  # dataset -> model -> changes

    def params(self, model: str, dataset: str | None = None, **changes) -> dict:
        """Constructor parameters of `model` under this preset ({} for models it leaves at their
        defaults), with the preset's changes for `dataset` and then `changes` applied."""
        return {**self.models.get(model, {}), **self.dataset_params.get(dataset, {}).get(model, {}), **changes}

    def training(self, model: str | None = None, **changes) -> TrainConfig:
        """How `model` trains under this preset (its own configuration, else the preset's), with
        `changes` applied."""
        return replace(self.model_train.get(model, self.train), **changes)


# S3-Rec's SASRec (run_finetune.py defaults; models.py, modules.py).
_S3REC_SASREC = {
    "dim": 64,  # --hidden_size 64
    "n_layers": 2,  # --num_hidden_layers 2
    "n_heads": 2,  # --num_attention_heads 2
    "max_len": 50,  # --max_seq_length 50
    "dropout": 0.5,  # --hidden_dropout_prob, --attention_probs_dropout_prob 0.5
    "loss": "bce",  # trainers.py cross_entropy: one negative per position
    "negatives": "sequence",  # datasets.py: neg_sample(set(items)) over the whole sequence
}
_S3REC_TRAIN = TrainConfig(
    epochs=200,  # --epochs 200
    patience=10,  # EarlyStopping(patience=10)
    batch_size=256,  # --batch_size 256
    lr=1e-3,  # --lr 0.001, Adam betas (0.9, 0.999), weight_decay 0
    monitor=S3REC_MONITOR,  # e6c774d run_finetune.py: early_stopping(np.array(scores)), all six
    improve="any",  # utils.EarlyStopping.compare: any component above the saved vector
    monitor_protocol="full",  # trainer.valid(full_sort=True)
)

# The SDA authors' recommenders (RaoZhongtao/SDA utils/argument.py defaults, same as
# liuqidong07/LLMEmb utils/argument.py L66-230, and the RAT lines of experiments/*/scft/CAMEL_qwen.bash).
_AUTHORS_COMMON = {
    "dim": 128,  # --hidden_size 128 (scripts)
    "n_layers": 2,  # --trm_num 2 (default)
    "n_heads": 1,  # --num_heads 1 (default)
    "max_len": 200,  # --max_len 200 (scripts)
    "dropout": 0.5,  # --dropout_rate 0.5 (default)
    "loss": "bce",  # LLMEmb models/SASRec.py SASRec_seq.forward, models/Bert4Rec.py forward: one negative each
    "negatives": "train",  # LLMEmb generators/data.py: random_neq outside the user's training sequence
    "align_tau": 2.0,  # --tau 2 (scripts); SDA models/LLMEmb.py Contrastive_Loss2(args.tau)
}
_AUTHORS_BERT4REC = {
    **_AUTHORS_COMMON,
    "mask_prob": 0.6,  # --mask_prob 0.6 (default); LLMEmb generators/data.py BertRecTrainDataset
    "random_prob": 0.1,  # same: 80% mask token, 10% random item, 10% unchanged
    "keep_prob": 0.1,
    "last_item_copies": True,  # same: __len__ = 2 x users, the second copy masks only the last item
    "head": False,  # LLMEmb models/Bert4Rec.py: hidden state . item embedding, no output head
}
_AUTHORS_TRAIN = TrainConfig(
    epochs=200,  # --num_train_epochs 200
    patience=20,  # --patience 20
    batch_size=512,  # --train_batch_size 512
    lr=1e-3,  # --lr 0.001, Adam, --l2 0; StepLR built but never stepped: constant
    monitor="NDCG@10",  # --watch_metric NDCG@10
    monitor_protocol="sampled",  # trainers/sequence_trainer.py eval: target + sampled negatives
    monitor_negatives=100,  # --test_neg 100
    fresh_negatives=True,  # LLMEmb generators/data.py SeqDataset: drawn in __getitem__, every pass
)

# VBPR and SLMRec in the SDA author's MMRec fork (RaoZhongtao/MMRec 854e5a7, src/configs/overall.yaml):
# each test user ranked against the 100 negatives stored for it (user_fixed_negative_sampling, neg_num
# 100: the workbench's stored negatives), validated on the same stored candidates every epoch.
_MMREC_TRAIN = TrainConfig(
    epochs=1000,  # epochs: 1000
    patience=20,  # stopping_step: 20
    batch_size=2048,  # train_batch_size: 2048 (interactions)
    lr=1e-3,  # learning_rate 0.001, Adam; learning_rate_scheduler [1.0, 50]: constant
    monitor="HR@10",  # valid_metric: Recall@10, which one target per user makes HR@10
    monitor_protocol="sampled",  # fixed_samples_sort_predict on the stored candidates
    monitor_negatives=None,  # all 100 stored
    fresh_negatives=False,  # the same stored negatives every epoch
)

PresetName = Literal["quick", "s3rec", "s3rec-sampled", "authors"]
PRESETS: dict[PresetName, Preset] = {
    "quick": Preset(
        "quick",
        models={},
        train=TrainConfig(epochs=30, patience=3),
        notes="model defaults, 30 epochs, patience 3: sized for toy data",
    ),
    "s3rec": Preset(
        "s3rec",
        models={"sasrec": _S3REC_SASREC},
        train=_S3REC_TRAIN,
        notes="S3-Rec's published full-ranking protocol (first code, six-metric 'any' early stopping)",
    ),
    "s3rec-sampled": Preset(
        "s3rec-sampled",
        models={"sasrec": _S3REC_SASREC},
        # run_finetune_sample.py: early_stopping(scores[-1:]) = sampled MRR, 99 negatives
        train=replace(_S3REC_TRAIN, monitor="MRR", improve="any", monitor_protocol="sampled", monitor_negatives=99),
        notes="S3-Rec's sampled protocol: selected on sampled validation MRR (99 negatives)",
    ),
    "authors": Preset(
        "authors",
        models={"sasrec": _AUTHORS_COMMON, "bert4rec": _AUTHORS_BERT4REC},
        train=_AUTHORS_TRAIN,
        # SDA models/Adapter.py SASRecPLUS/Bert4RecPLUS: the frozen table replaces the IDs; VBPR and
        # SLMRec ran in the author's MMRec fork, on IDs and features (the default, "id+features")
        item_repr={"sasrec": "features", "bert4rec": "features"},
        align_weights=(0.01, 0.05, 0.1, 0.15, 0.2),  # --alpha swept in experiments/*/scft/CAMEL_qwen.bash
        notes="the SDA authors' SASRec/BERT4Rec settings and their MMRec fork's VBPR/SLMRec protocol; the "
        "authors' causal-mask omission and feature-row shift are not reproduced (docs/FIDELITY.md); seed 42 "
        "there, one run per alpha",
        model_train={
            "vbpr": _MMREC_TRAIN,  # overall.yaml: Adam 1e-3, no weight decay
            "slmrec": replace(_MMREC_TRAIN, lr=1e-4, weight_decay=1e-4),  # model/SLMRec.yaml's pick, weight_decay
        },
        # model/SLMRec.yaml (92d8a97, 854e5a7): the picks recorded per dataset (ssl_temp 0.5 and
        # learning_rate 1e-4 everywhere; ssl_alpha 1.0 for beauty and toys, the model default)
        dataset_params={"sports": {"slmrec": {"ssl_weight": 0.5}}},
    ),
}
ALIGNMENT_PARAMS = ("align_items", "align_weight", "align_tau")


def sequential_models() -> list[str]:
    """The registered recommenders that encode the user's sequence (SequentialRecommender)."""
    return [name for name in RECOMMENDERS if issubclass(RECOMMENDERS[name], SequentialRecommender)]


def get_preset(name: PresetName) -> Preset:
    return PRESETS[check_choice(name, PresetName, "recommender preset")]


def pretrain_id_items(
    dataset,
    model: str = "sasrec",
    preset: str = "authors",
    seed: int = 0,
    out: str | Path = "id-items",
    train: TrainConfig | None = None,
) -> Path:
    """Train `model` on ID embeddings with `preset`'s settings (alignment off) and save its item
    table [n_items, dim] as out/items.npy, the frozen reference of the alignment loss; a finished
    table is read back. `train` replaces the preset's training (its seed is set to `seed`)."""
    if not issubclass(RECOMMENDERS[model], SequentialRecommender):
        raise ValueError(
            f"pretrain_id_items trains a sequential model ({', '.join(sequential_models())}), got {model!r}"
        )
    out = Path(out)
    table = out / "items.npy"
    if table.exists():
        return table
    chosen = get_preset(preset)
    params = {k: v for k, v in chosen.params(model).items() if k not in ALIGNMENT_PARAMS}
    prepared = load_prepared(dataset) if isinstance(dataset, (str, Path)) else dataset
    data = InteractionData.from_prepared(prepared)
    seed_everything(seed)
    recommender = RECOMMENDERS[model](data, item_repr="id", **params)
    fit(recommender, data, replace(train or chosen.train, seed=seed), checkpoint_dir=out / "checkpoint")
    with atomic_path(table) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, recommender.tables().items.detach().cpu().numpy())
    return table
