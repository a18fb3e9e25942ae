"""The launch configurations in env/accelerate/, as `accelerate launch` reads them.

Without deepspeed: every configuration launches with bf16, and each ZeRO-2 one leaves nothing on
"auto" once the adaptation has filled in its batch, accumulation and clipping (accelerate cannot
size them itself: no dataloader is prepared). With deepspeed installed (`pip install -e
.[deepspeed]`), the real adaptation trains under ZeRO-2 on CPU processes (gloo) to the adapter
of the same run without DeepSpeed: one process against a plain run, two against DDP, and the
two-host configuration run as two hosts on localhost.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from accelerate.commands import launch
from accelerate.utils import DeepSpeedPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env
from safetensors.torch import load_file

from sda_lib.method.adapt import AdaptConfig, _fill_deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "env" / "accelerate").glob("*.yaml"))
DDP, ZERO2, ZERO2_HOSTS = (
    ROOT / "env" / "accelerate" / f"{name}.yaml" for name in ("ddp-1host-8gpu", "zero2-1host-8gpu", "zero2-2hosts-8gpu")
)
LAUNCHERS = ("deepspeed_launcher", "multi_gpu_launcher", "simple_launcher")


def launched(config: Path) -> tuple[str, object]:
    """Which launcher `accelerate launch --config_file config` picks, and the arguments it gets
    (the launcher itself is not run)."""
    args = launch.launch_command_parser().parse_args(
        ["--config_file", str(config), "--main_process_port", "0", "-m", "sda_lib", "adapt"]
    )
    calls = {}
    with mock.patch.multiple(launch, **{name: functools.partial(calls.__setitem__, name) for name in LAUNCHERS}):
        launch.launch_command(args)
    ((name, launcher_args),) = calls.items()
    return name, launcher_args


def _flatten(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def zero2_configs() -> list[Path]:
    return [c for c in CONFIGS if launched(c)[0] == "deepspeed_launcher"]


def test_there_are_ddp_and_zero2_configurations():
    assert {launched(c)[0] for c in CONFIGS} == {"deepspeed_launcher", "multi_gpu_launcher"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_configuration_launches_in_bf16(config):
    assert launched(config)[1].mixed_precision == "bf16"


@pytest.mark.parametrize("config", zero2_configs(), ids=lambda c: c.stem)
def test_zero2_configuration_is_complete_once_the_run_fills_it(config):
    """What the processes of the configuration, as written, hand DeepSpeed."""
    _, args = launched(config)
    cmd, env = prepare_deepspeed_cmd_env(args)
    assert cmd is None, (
        f"{config.name} starts `{cmd[0]}` with a hostfile; for the same accelerate command on "
        "every host, set deepspeed_multinode_launcher: standard"
    )
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}):
        plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    run = AdaptConfig(batch_size=64, grad_accum=2, max_grad_norm=0.5)
    processes = int(args.num_processes)
    _fill_deepspeed_config(
        SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=processes), run
    )
    ds = plugin.deepspeed_config
    left = [key for key, value in _flatten(ds) if value == "auto"]
    assert not left, f"{config.name}: {left} still 'auto' after the run filled the configuration"
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] == run.batch_size // processes
    assert ds["train_batch_size"] == run.batch_size * run.grad_accum
    assert (ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (run.grad_accum, run.max_grad_norm)


# ---- training under ZeRO-2 (needs deepspeed) ------------------------------------------------------

RUN = ["-p", "steps=3", "-p", "batch_size=8", "-p", "grad_accum=2"]


@pytest.fixture(scope="session")
def deepspeed_installed():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install -e .[deepspeed]): ZeRO-2 training not exercised")


def adapt(data, out: Path, *launch_options: str, log: Path | None = None) -> subprocess.Popen:
    """Start `[accelerate launch OPTIONS] python -m sda_lib adapt` on toy-tiny, writing `out`; the
    output goes to `log` (default: beside `out`)."""
    runner = (
        [sys.executable, "-m", "accelerate.commands.launch", *launch_options] if launch_options else [sys.executable]
    )
    command = [*runner, "-m", "sda_lib", "adapt", "--dataset", str(data.folder), *RUN, "--out-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = log or out.with_suffix(".log")
    with open(log, "w") as sink:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    child.log = log
    return child


def finished(child: subprocess.Popen, out: Path) -> dict:
    """The record of a run started by `adapt`, once it has ended well."""
    try:
        child.wait(timeout=600)  # the first DeepSpeed launch compiles its shared-memory op (2-3 min)
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    assert child.returncode == 0, f"{' '.join(child.args[:9])} ... failed:\n{child.log.read_text()[-4000:]}"
    return json.loads((out / "adapters" / "sda" / "adapt.json").read_text())


def run(data, out: Path, *launch_options: str) -> dict:
    return finished(adapt(data, out, *launch_options), out)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapters" / "sda" / "adapter" / "adapter.safetensors"))


def assert_same_adapter(run: Path, reference: Path) -> None:
    a, b = adapter(run), adapter(reference)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def ddp_two(deepspeed_installed, toy_tiny, tmp_path_factory):
    """The reference for two processes: the DDP configuration (gloo on CPU)."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    record = run(toy_tiny, out, "--config_file", str(DDP), "--num_processes", "2", "--main_process_port", "0")
    assert record["processes"] == 2, "the DDP reference ran as one process: adapt must run CPU hosts in cpu mode"
    return out


@pytest.mark.slow
def test_zero2_one_process_trains_the_plain_runs_adapter(deepspeed_installed, toy_tiny, tmp_path):
    run(toy_tiny, tmp_path / "plain")
    record = run(
        toy_tiny, tmp_path / "zero2", "--config_file", str(ZERO2), "--num_processes", "1", "--main_process_port", "0"
    )
    assert record["processes"] == 1
    assert_same_adapter(tmp_path / "zero2", tmp_path / "plain")


@pytest.mark.slow
def test_zero2_two_processes_train_the_ddp_adapter(deepspeed_installed, toy_tiny, ddp_two, tmp_path):
    record = run(
        toy_tiny, tmp_path / "zero2", "--config_file", str(ZERO2), "--num_processes", "2", "--main_process_port", "0"
    )
    assert record["processes"] == 2, "DeepSpeed ran, but accelerate saw one process: name gloo on CPU hosts"
    assert_same_adapter(tmp_path / "zero2", ddp_two)


@pytest.mark.slow
def test_zero2_two_host_configuration_on_localhost(deepspeed_installed, toy_tiny, ddp_two, tmp_path):
    """Both "hosts" run the same command but their machine rank, as the configuration says."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / "zero2"
    hosts = [
        adapt(
            toy_tiny,
            out,
            "--config_file",
            str(ZERO2_HOSTS),
            "--num_processes",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            log=tmp_path / f"host{rank}.log",
        )
        for rank in (0, 1)
    ]
    records = [finished(host, out) for host in hosts]
    assert records[0]["processes"] == 2
    assert_same_adapter(out, ddp_two)
