"""The workbench installed as a wheel, outside the repository: its notebooks, template and weights
travel as package data, and `sda run` works from any folder."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_runs_data_and_zero_shot_in_a_fresh_environment(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."]
    subprocess.run(build, cwd=ROOT, check=True, timeout=600)
    (wheel,) = wheels.glob("sda_workbench-*.whl")
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True, timeout=300)
    python = fresh / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    # The dependencies come from this environment (a plain path, so its editable checkout of sda_lib
    # is not activated); the workbench itself only from the wheel.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SDA_OUTPUTS", "PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.check_output(
        [python, "-c", "import sda_lib; print(sda_lib.__file__)"], cwd=work, env=env, text=True
    )
    assert Path(where).is_relative_to(site), f"sda_lib imported from {where}, not from the wheel"
    run = subprocess.run(
        [fresh / "bin" / "sda", "run", "--dataset", "toy-tiny", "--stages", "data,zero_shot"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    folder = work / "outputs" / "toy-tiny"
    assert (folder / "data" / "card.json").is_file()
    assert (folder / "default" / "02_zero_shot.ipynb").is_file() and (folder / "default" / "report.html").is_file()
    assert (folder / "default" / "embeddings" / "zero-shot").is_dir()
