"""Run profiles: the settings a whole run takes, by name, so one word says which experiment ran.

- `paper`: the authors' experiment, the default on the Amazon datasets: their data recipe,
  Qwen2.5-VL-7B, their adaptation steps per dataset, their recommenders' settings and budgets,
  Table 1's CLIP row (ViT-L/14, downloaded like the 7B), and the gradient study in the main run's
  regime (docs/FIDELITY.md gives the source of each value); gradient checkpointing, which they
  always used, only where the estimate of a step without it does not fit the GPU's memory
  (`gradient_checkpointing=None`, sda_lib.method.adapt.plan_checkpointing; docs/FIDELITY.md). On S3-Rec's
  preprocessed files, which the authors' recipe cannot read, add `-p data.recipe=5core`; offline,
  `-p backbone=tiny -p clip_model=tiny` swaps both downloads for random presets.
- `quick`: the notebooks' own defaults, sized for 2 CPU cores (the random `tiny` preset); the
  default on toy-tiny and a user's own datasets.
- `teaching`: the quick settings on the `mini` backbone (real pretrained weights, so the demo shows
  what SDA keeps and separates; sda_lib.method.backbones.mini), the default on toy. Shorter adaptation runs: 100
  steps (03), 40 per ablation variant (06), 20 for each adapter of the gradient-conflict study
  (07); and one dropout mask shared by MoDA's experts (a faster step on CPU; docs/FIDELITY.md).
  The toy job's time on 2 cores: docs/results.md.

A profile only fills what the command line leaves open: `-p adapt.steps=5` wins over the profile.
"""

from __future__ import annotations

from typing import Literal

from ..utils.choices import check_choice

Profile = Literal["paper", "quick", "teaching"]
# The runner's bound on one notebook cell, in seconds (its --cell-timeout overrides it): a cell that
# hangs fails its stage instead of holding the run for ever. The paper profile's longest cell, the
# ablation grid (four variants of 4,000 adaptation steps, their exports and recommenders), is
# estimated at 7-9 hours on one H100 (docs: GPU host); a day leaves room for a slower GPU. The CPU
# profiles' longest cells take minutes on 2 cores.
CELL_TIMEOUT = {"paper": 24 * 3600, "quick": 1800, "teaching": 1800}
AMAZON = ("beauty", "sports", "toys")
# MAX_STEPS of the authors' final scripts (RaoZhongtao/SDA:experiments/<dataset>/scft/CAMEL_qwen.bash).
PAPER_STEPS = {"beauty": 4000, "sports": 2000, "toys": 4000}
PAPER_CLIP = "openai/clip-vit-large-patch14"  # recsys.published.CLIP, spelled out: the runner loads no model code


_MINI = {"backbone": "mini"}
_TRAIN_MINI = {**_MINI, "dropout_masks": "shared"}
TEACHING = {
    "zero_shot": _MINI,
    "adapt": {**_TRAIN_MINI, "steps": 100},
    "export": _MINI,
    "ablations": {**_TRAIN_MINI, "ablation_steps": 40},
    "gradient_conflict": {**_TRAIN_MINI, "conflict_steps": 20},
}


def default_profile(dataset: str) -> str:
    """paper on the Amazon datasets, teaching on toy (the demo), quick elsewhere (toy-tiny, your own)."""
    if dataset in AMAZON:
        return "paper"
    return "teaching" if dataset == "toy" else "quick"


def profile_parameters(profile: Profile, dataset: str) -> dict[str, dict]:
    """{stage: {notebook parameter: value}} that `profile` sets for `dataset`."""
    check_choice(profile, Profile, "profile")
    if profile == "quick":
        return {}
    if profile == "teaching":
        return TEACHING
    steps = PAPER_STEPS.get(dataset, max(PAPER_STEPS.values()))
    lvlm = {"backbone": "7b"}
    return {
        "data": {"recipe": "sda"},  # their filters on the full reviews (data_process.ipynb); tail rule: the default
        # Table 1's CLIP row: the authors' MMRec runs read 768-wide CLIP features (clip_768), ViT-L/14's width
        "zero_shot": {**lvlm, "baselines": ["pretrained", "clip"], "clip_model": PAPER_CLIP},
        "adapt": {**lvlm, "steps": steps, "gradient_checkpointing": None, "checkpoint_every": 500},
        "export": lvlm,
        "recommend": {
            "recsys_preset": "authors",  # sda_lib.recsys.presets: their sizes, budgets, features alone
            "features": ["id", "clip", "zero-shot", "sda", "pretrained"],  # Table 1's rows (+ Base of VBPR, SLMRec)
        },
        "ablations": {
            **lvlm,
            "ablation_steps": steps,
            "gradient_checkpointing": None,
            "recsys_preset": "authors",
            "ablation_epochs": 200,
        },
        # section 3.3.3 in the main run's regime: its lr and items a step, gradients taken in training
        # mode (their analyze_gradient ran inside the training forward), checkpointing as they trained
        "gradient_conflict": {
            **lvlm,
            "conflict_lr": 2e-4,
            "conflict_batch_size": 32,
            "conflict_mode": "train",
            "conflict_steps": 200,
            "every": 20,
            "gradient_checkpointing": True,
        },
    }
