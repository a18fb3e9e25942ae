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
The notebooks resolve their profile here too (`resolve`, in each one's first code cell), so
`papermill notebooks/03_adapt.ipynb out.ipynb -p dataset beauty` trains what the runner trains.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal, get_args

from ..utils.choices import check_choice

Profile = Literal["paper", "quick", "teaching"]
PROFILES = get_args(Profile)
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


# The settings each profile decides, per stage, with the quick profile's values: the notebooks' CPU-sized
# defaults on the random tiny preset. A notebook's parameters cell leaves each of them None ("the
# profile's"), so a notebook run by hand (JupyterLab, papermill) and the runner resolve them here, alike.
QUICK = {
    "data": {"recipe": "5core"},
    "zero_shot": {"backbone": "tiny", "baselines": ["pretrained"], "clip_model": None},
    "adapt": {
        "backbone": "tiny",
        "steps": 200,
        "dropout_masks": "per-expert",
        "gradient_checkpointing": None,
        "checkpoint_every": 50,
    },
    "export": {"backbone": "tiny"},
    "recommend": {"recsys_preset": "quick", "features": ["id", "zero-shot", "sda", "pretrained"]},
    "ablations": {
        "backbone": "tiny",
        "ablation_steps": 50,
        "dropout_masks": "per-expert",
        "gradient_checkpointing": None,
        "recsys_preset": "quick",
        "ablation_epochs": 30,
    },
    "gradient_conflict": {
        "backbone": "tiny",
        "conflict_steps": 20,
        "conflict_batch_size": 16,
        "conflict_lr": 1e-3,
        "every": 4,
        "dropout_masks": "per-expert",
        "gradient_checkpointing": False,
        "conflict_mode": "eval",
    },
}
_MINI = {"backbone": "mini"}
_TRAIN_MINI = {**_MINI, "dropout_masks": "shared"}
TEACHING = {
    "zero_shot": _MINI,
    "adapt": {**_TRAIN_MINI, "steps": 100},
    "export": _MINI,
    "ablations": {**_TRAIN_MINI, "ablation_steps": 40},
    "gradient_conflict": {**_TRAIN_MINI, "conflict_steps": 20},
}
HUB_7B = (
    "Qwen/Qwen2.5-VL-7B-Instruct"  # sda_lib.method.backbones.qwen.HUB_7B, spelled out: the runner loads no model code
)


def default_profile(dataset: str) -> str:
    """paper on the Amazon datasets, teaching on toy (the demo), quick elsewhere (toy-tiny, your own)."""
    if dataset in AMAZON:
        return "paper"
    return "teaching" if dataset == "toy" else "quick"


def profile_parameters(profile: Profile, dataset: str) -> dict[str, dict]:
    """{stage: {notebook parameter: value}} that `profile` sets for `dataset`: every setting of
    QUICK, with the profile's own values in place of the quick ones."""
    check_choice(profile, Profile, "profile")
    changes = {"quick": {}, "teaching": TEACHING, "paper": _paper(dataset)}[profile]
    return {stage: {**values, **changes.get(stage, {})} for stage, values in QUICK.items()}


def _paper(dataset: str) -> dict[str, dict]:
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


class MissingWeights(RuntimeError):
    """A setting names hub weights this machine has not downloaded (nothing downloads at run time)."""


OFFLINE = {"backbone": "mini", "clip_model": "tiny"}  # what runs without downloads, per setting


def resolve(stage: str, namespace: dict) -> None:
    """Complete a notebook's parameters, in place, the way the runner does (`profile` among them).

    `namespace` is the notebook's globals() after its parameters cell (and papermill's). The profile
    is its `profile`, else the dataset's default; each setting the profile decides for `stage`
    (QUICK's keys) that is still None takes the profile's value. A string holding a list or dict
    literal (papermill's `-p baselines "[]"`) becomes that list or dict, as the runner reads every
    `-p` value as a literal. Prints what it decided, then raises MissingWeights before anything is
    loaded when a setting names hub weights that are not on this machine."""
    literal_parameters(namespace)
    dataset = namespace["dataset"]
    profile = namespace.get("profile") or default_profile(dataset)
    chosen = "" if namespace.get("profile") else f" (the default on {dataset})"
    values = profile_parameters(profile, dataset).get(stage, {})
    for key, value in values.items():
        if namespace.get(key) is None:
            namespace[key] = value
    namespace["profile"] = profile
    decided = ", ".join(f"{k}={namespace[k]!r}" for k in values) or "it decides nothing in this notebook"
    print(f"profile {profile}{chosen}: {decided}")
    check_weights({k: namespace[k] for k in values}, f"the {profile} profile{chosen}")


def literal_parameters(namespace: dict) -> None:
    """Read, in place, each parameter given as the text of a list or dict (papermill's
    `-p seeds "[0, 1]"` passes the text) as that list or dict, as the runner reads `-p seeds=[0,1]`."""
    for key, value in list(namespace.items()):
        if not key.startswith("_") and isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, (list, dict)):
                namespace[key] = parsed


def hub_repository(name) -> str | None:
    """The hub repository a backbone or CLIP setting loads from, None for a preset or a folder."""
    if name is None:
        return None
    name = str(name)
    if name.lower() == "7b":
        return HUB_7B
    local = name.startswith(("/", ".", "~")) or "\\" in name or Path(name).expanduser().exists()
    return name if name.count("/") == 1 and not local else None


def check_weights(settings: dict, where: str = "") -> None:
    """Raise MissingWeights, naming the download command and the offline alternative, when a
    `backbone` or `clip_model` in `settings` is a hub model absent from the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    for key, offline in OFFLINE.items():
        repository = hub_repository(settings.get(key))
        if repository is None or isinstance(try_to_load_from_cache(repository, "config.json"), str):
            continue
        raise MissingWeights(
            f"{key}={settings[key]!r}{f' ({where})' if where else ''} needs the weights of {repository}, which "
            f"are not on this machine, and nothing here downloads weights while it runs. Fetch them once with "
            f"`hf download {repository}` (or `hf download {repository} --local-dir FOLDER` and give FOLDER as "
            f"{key}), or run offline on {offline!r}: `-p {key} {offline}` with papermill, "
            f"`-p {key}={offline}` with the runner."
        )
