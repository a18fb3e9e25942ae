"""Run profiles: the settings a whole run takes, by name, so one word says which experiment ran.

- `paper`: the authors' experiment, the default on the Amazon datasets: their data recipe,
  Qwen2.5-VL-7B, their adaptation steps per dataset, their recommender budget (docs/FIDELITY.md
  gives the source of each value); gradient checkpointing, which they always used, only where the
  estimate of a step without it does not fit the GPU's memory (`gradient_checkpointing=None`,
  sda_lib.adapt.plan_checkpointing; docs/FIDELITY.md). On S3-Rec's preprocessed
  files, which the authors' recipe cannot read, add `-p data.recipe=5core`.
- `quick`: the notebooks' own defaults, sized for 2 CPU cores (the random `tiny` preset); the
  default on toy-tiny and a user's own datasets.
- `teaching`: the quick settings on the `mini` backbone (real pretrained weights, so the demo shows
  what SDA keeps and separates; sda_lib.mini), the default on toy. Shorter adaptation runs: 100
  steps (03), 40 per ablation variant (06), 20 for each adapter of the gradient-conflict study
  (07); and one dropout mask shared by MoDA's experts (a mini step on 2 CPU threads 1.22 s instead
  of 2.18 s; docs/FIDELITY.md). With the runner's two jobs on 2 cores the toy job takes about 9
  minutes (README).

A profile only fills what the command line leaves open: `-p adapt.steps=5` wins over the profile.
"""

from __future__ import annotations

PROFILES = ("paper", "quick", "teaching")
AMAZON = ("beauty", "sports", "toys")
# MAX_STEPS of the authors' final scripts (RaoZhongtao/SDA:experiments/<dataset>/scft/CAMEL_qwen.bash).
PAPER_STEPS = {"beauty": 4000, "sports": 2000, "toys": 4000}


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


def profile_parameters(profile: str, dataset: str) -> dict[str, dict]:
    """{stage: {notebook parameter: value}} that `profile` sets for `dataset`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if profile == "quick":
        return {}
    if profile == "teaching":
        return TEACHING
    steps = PAPER_STEPS.get(dataset, max(PAPER_STEPS.values()))
    lvlm = {"backbone": "7b"}
    return {
        "data": {"recipe": "sda"},  # their filters on the full reviews (data_process.ipynb); tail rule: the default
        "zero_shot": lvlm,
        "adapt": {**lvlm, "steps": steps, "gradient_checkpointing": None, "checkpoint_every": 500},
        "export": lvlm,
        "recommend": {"recsys_preset": "authors"},  # sda_lib.recsys.presets: their sizes, budget, features alone
        "ablations": {
            **lvlm,
            "ablation_steps": steps,
            "gradient_checkpointing": None,
            "recsys_preset": "authors",
            "ablation_epochs": 200,
        },
        "gradient_conflict": lvlm,
    }
