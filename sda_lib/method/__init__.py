"""The paper's method, usable from Python without Jupyter or the runner: backbones (the LVLM and
its item prompts, `backbones/`), MoDA (`moda.py`, with its lean per-expert dropout in
`expert_dropout.py`) and the other adapter kinds (`adapters.py`), the CMSA loss (`cmsa.py`),
adaptation (`adapt.py`) and the export of item embeddings (`export.py`, `features.py`).
Nothing here imports the workbench; tests/test_packaging.py keeps it so."""
