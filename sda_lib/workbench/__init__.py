"""The workbench around the method: the stage runner over the notebooks (`run.py`), profiles,
the report, sweeps, JupyterLab copies (`lab.py`), the stage scripts for `accelerate launch` and the
`sda` command (`cli.py`)."""
