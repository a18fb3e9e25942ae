"""Fault injection: SIGTERM to each long stage, concurrent writers, dead lock owners, damaged
files, a full disk and the exact messages. Each test asserts the message and that the last
complete state is intact."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sda_lib.data import DataError, load_prepared, prepare_dataset
from sda_lib.data.__main__ import main as data_main
from sda_lib.method.features import FeatureError, FeatureTable
from sda_lib.recsys.experiment import run_experiment
from sda_lib.recsys.train import TrainConfig
from sda_lib.utils import exits, locks
from sda_lib.workbench.run import main as run_main
from sda_lib.workbench.stage_scripts import adapt as adapt_main
from sda_lib.workbench.stage_scripts import export as export_main

REPO = Path(__file__).resolve().parents[1]
ADAPT = ["--dataset", "toy-tiny", "-p", "steps=10", "-p", "batch_size=4", "-p", "checkpoint_every=100"]
EXPORT = ["--dataset", "toy-tiny", "--adapter-name", "zero-shot", "--chunk", "4", "--d", "8"]
TRAIN = TrainConfig(epochs=30, patience=100, batch_size=64, progress=False)
RECSYS = f"""
import sys
from sda_lib.utils.exits import command
from sda_lib.recsys.experiment import run_experiment
from sda_lib.recsys.train import TrainConfig
train = TrainConfig(epochs={TRAIN.epochs}, patience={TRAIN.patience}, batch_size={TRAIN.batch_size}, progress=False)
sys.exit(command(lambda: run_experiment("toy-tiny", "sasrec", train=train, out=sys.argv[1]) and 0)())
"""


@pytest.fixture
def prepared(outputs):
    prepare_dataset("toy-tiny")
    return outputs


def _start(args: list[str], outputs: Path) -> subprocess.Popen:
    env = {**os.environ, "SDA_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _terminate_when(proc: subprocess.Popen, path: Path, settle: float = 0.0) -> tuple[int, str]:
    """SIGTERM `proc` `settle` seconds after `path` appears (the stage is under way); its exit
    status and stderr."""
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


# ---- preemption: SIGTERM checkpoints, exits 75, and the rerun equals an uninterrupted run ------


def test_sigterm_during_adaptation_checkpoints_and_resumes_identically(prepared):
    run = prepared / "toy-tiny" / "default"
    settings = [*ADAPT, "-p", "checkpoint_every=3"]  # the first checkpoint tells that training is under way
    proc = _start(["-m", "sda_lib", "adapt", *settings], prepared)
    code, err = _terminate_when(proc, run / "adapters" / "sda" / "checkpoints" / "checkpoint_0" / "state.json")
    assert code == exits.PREEMPTED, err
    assert "adaptation stopped on SIGTERM after step" in err and "run the same command again" in err
    assert len(list((run / "adapters" / "sda" / "checkpoints").glob("checkpoint_*/state.json"))) == 2
    assert not (run / "adapters" / "sda" / "adapter").exists()

    assert adapt_main(settings) == 0
    record = json.loads((run / "adapters" / "sda" / "adapt.json").read_text())
    assert 3 < record["resumed_from_step"] < 10
    assert adapt_main([*settings, "--out-dir", str(prepared / "straight")]) == 0
    a = load_file(str(run / "adapters" / "sda" / "adapter" / "adapter.safetensors"))
    b = load_file(str(prepared / "straight" / "adapters" / "sda" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_during_export_keeps_finished_chunks_and_resumes(prepared):
    parts = prepared / "toy-tiny" / "default" / "embeddings" / "zero-shot.parts"
    proc = _start(["-m", "sda_lib", "export", *EXPORT], prepared)
    code, err = _terminate_when(proc, parts / "00000000.npz")
    assert code == exits.PREEMPTED, err
    assert "export stopped on SIGTERM" in err and str(parts) in err
    assert 0 < len(list(parts.glob("*.npz"))) < 20
    assert not (parts.parent / "zero-shot").exists()

    assert export_main(EXPORT) == 0
    assert export_main([*EXPORT, "--out-dir", str(prepared / "straight")]) == 0
    resumed = FeatureTable.load(parts.parent / "zero-shot")
    straight = FeatureTable.load(prepared / "straight" / "embeddings" / "zero-shot")
    assert np.array_equal(resumed.text, straight.text) and np.array_equal(resumed.features, straight.features)


def test_sigterm_during_recommender_training_checkpoints_and_resumes_identically(prepared):
    out = prepared / "sasrec"
    proc = _start(["-c", RECSYS, str(out)], prepared)
    code, err = _terminate_when(proc, out / "checkpoint" / "last.pt")
    assert code == exits.PREEMPTED, err
    assert "sasrec training stopped on SIGTERM after epoch" in err and "to resume" in err
    assert not (out / "metrics.csv").exists()

    resumed = run_experiment("toy-tiny", "sasrec", train=TRAIN, out=out)
    straight = run_experiment("toy-tiny", "sasrec", train=TRAIN, out=prepared / "straight")
    history = [r.fit.history.drop(columns="seconds") for r in (resumed, straight)]
    pd.testing.assert_frame_equal(*history)
    pd.testing.assert_frame_equal(resumed.metrics, straight.metrics)


def test_sigterm_to_the_runner_reaches_the_stage(prepared):
    run = prepared / "toy-tiny" / "default"
    command = ["-m", "sda_lib.workbench.run", "--dataset", "toy-tiny", "--stages", "adapt", "-p", "adapt.steps=40"]
    command += ["-p", "train_batch_size=4", "-p", "checkpoint_every=1000"]
    proc = _start(command, prepared)
    code, err = _terminate_when(proc, run / "adapters" / ".sda.lock", settle=1.0)
    assert code == exits.PREEMPTED, err
    assert "stage 'adapt' stopped on SIGTERM; run the same command again to resume it" in err
    assert list((run / "adapters" / "sda" / "checkpoints").glob("checkpoint_*/state.json"))  # the kernel's
    assert not list(prepared.rglob(".*.lock"))  # rerunning resumes as test_sigterm_during_adaptation shows


# ---- locks: one writer per folder ---------------------------------------------------------------


def _hold(folder: Path, outputs: Path) -> subprocess.Popen:
    """Another live process holding `folder`'s lock."""
    code = f"from sda_lib.utils.locks import folder_lock\nwith folder_lock({str(folder)!r}, 'a test holder'):\n"
    code += "    print('held', flush=True)\n    import time; time.sleep(120)\n"
    proc = _start(["-c", code], outputs)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder(prepared, capsys):
    run = prepared / "toy-tiny" / "default"
    holders = [_hold(folder, prepared) for folder in (run, run / "adapters" / "sda", prepared / "toy-tiny" / "data")]
    try:
        commands = {
            "the runner": lambda: run_main(["--dataset", "toy-tiny", "--stages", "data"]),
            "adaptation": lambda: adapt_main(ADAPT),
            "preparation": lambda: data_main(["prepare", "toy-tiny", "--force"]),
        }
        for what, command in commands.items():
            assert command() == exits.BUSY, what
            message = capsys.readouterr().err
            assert "is in use by a test holder (process" in message, what
            assert f"on host {socket.gethostname()}" in message and "wait for it to finish" in message
        assert any(str(h.pid) in message for h in holders)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert load_prepared("toy-tiny").n_items == 80  # the held folder was left as it was
    assert not (run / "adapters" / "sda" / "adapter").exists()


def test_concurrent_prepares_of_one_folder(tmp_path):
    out = tmp_path / "D"
    command = ["-m", "sda_lib.data", "prepare", "toy-tiny", "--out", str(out), "--force"]
    procs = [_start(command, tmp_path) for _ in range(3)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert {code for code, _ in results} <= {0, exits.BUSY}, results
    assert any(code == 0 for code, _ in results)
    for code, err in results:
        assert "Traceback" not in err
        if code == exits.BUSY:
            assert f"{out} is in use by data preparation (process" in err
    assert load_prepared(out).n_items == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]  # no lock, .tmp or .old left


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "data"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    locks.lock_file(out).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "x"}))
    (tmp_path / ".data.abc123.tmp").mkdir()  # what a killed writer leaves beside the folder ...
    out.mkdir()
    (out / ".card.json.xyz.tmp").write_text("{")  # ... and in it
    with caplog.at_level("WARNING", logger="sda_lib"):
        prepare_dataset("toy-tiny", out=out)
    assert f"its lock names process {pid}" in caplog.text and "no longer holds it" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_folder_replaced_mid_rename_is_moved_back(tmp_path):
    out = prepare_dataset("toy-tiny", out=tmp_path / "data")
    os.replace(out, tmp_path / ".data.old")  # killed between atomic_dir's two renames
    prepare_dataset("toy-tiny", out=out)
    assert load_prepared(out).n_items == 80 and not (tmp_path / ".data.old").exists()


# ---- damaged state --------------------------------------------------------------------------------


def _flip(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_damaged_adaptation_checkpoint_falls_back_to_the_previous(prepared, caplog):
    settings = ["--dataset", "toy-tiny", "-p", "steps=5", "-p", "batch_size=4", "-p", "checkpoint_every=2"]
    adapters = prepared / "toy-tiny" / "default" / "adapters" / "sda"
    assert adapt_main(settings) == 0  # checkpoints after steps 2 and 4 stay beside the adapter
    straight = (adapters / "adapter" / "adapter.safetensors").read_bytes()
    checkpoints = sorted((adapters / "checkpoints").glob("checkpoint_*"))
    assert len(checkpoints) == 2
    _flip(checkpoints[-1] / "model.safetensors")  # a flipped bit in the newest
    with caplog.at_level("WARNING", logger="sda_lib"):
        assert adapt_main(settings) == 0
    assert f"checkpoint {checkpoints[-1]} is damaged (model.safetensors does not match its checksum)" in caplog.text
    assert json.loads((adapters / "adapt.json").read_text())["resumed_from_step"] == 2
    assert (adapters / "adapter" / "adapter.safetensors").read_bytes() == straight
    # a checkpoint from before checksums, cut short: it fails while loading, and nothing intact is left
    newest = max((adapters / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    state = json.loads((newest / "state.json").read_text())
    del state["files"]
    (newest / "state.json").write_text(json.dumps(state))
    (newest / "optimizer.bin").write_bytes((newest / "optimizer.bin").read_bytes()[:-50])
    with pytest.raises(ValueError, match=r"partly loaded before it failed: delete .*checkpoints"):
        adapt_main(settings)
    assert f"checkpoint {newest} is damaged (it does not load" in caplog.text


def test_damaged_recommender_checkpoint_falls_back_to_the_previous(prepared, caplog):
    short = TrainConfig(**{**TRAIN.__dict__, "epochs": 3})
    run_experiment("toy-tiny", "sasrec", train=short, out=prepared / "cut")
    _flip(prepared / "cut" / "checkpoint" / "last.pt")
    with caplog.at_level("WARNING", logger="sda_lib"):
        resumed = run_experiment("toy-tiny", "sasrec", train=TRAIN, out=prepared / "cut")
    assert "last.pt does not match its checksum" in caplog.text and "trying the one before" in caplog.text
    straight = run_experiment("toy-tiny", "sasrec", train=TRAIN)
    pd.testing.assert_frame_equal(resumed.metrics, straight.metrics)


def test_damaged_feature_table_and_edited_manifest_are_named(prepared):
    assert export_main([*EXPORT, "--chunk", "40"]) == 0
    table = prepared / "toy-tiny" / "default" / "embeddings" / "zero-shot"
    manifest = json.loads((table / "manifest.json").read_text())
    _flip(table / "features.npy")
    with pytest.raises(FeatureError, match=r"features.npy does not match its checksum .*export the table again"):
        FeatureTable.load(table)
    np.save(table / "features.npy", np.zeros((80, 16), dtype=np.float32))
    manifest["dims"]["features_text"] += 1
    manifest.pop("sha256")
    (table / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureError, match=r"the manifest's dims do not fit its arrays"):
        FeatureTable.load(table)


def test_damaged_export_chunk_is_computed_again(prepared, caplog, monkeypatch):
    from sda_lib.method import export

    parts = prepared / "toy-tiny" / "default" / "embeddings" / "zero-shot.parts"

    def killed(*args, **kw):
        raise KeyboardInterrupt

    real = export.embed_items
    monkeypatch.setattr(export, "embed_items", killed)  # stopped before its first chunk: the plan is written
    with pytest.raises(KeyboardInterrupt):
        export_main(EXPORT)
    monkeypatch.setattr(export, "embed_items", real)
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "00000000.npz").write_bytes(b"PK\x03\x04 cut short")
    with caplog.at_level("WARNING", logger="sda_lib"):
        assert export_main(EXPORT) == 0
    assert f"{parts / '00000000.npz'} is damaged" in caplog.text


def test_changed_prepared_file_is_named(tmp_path):
    out = prepare_dataset("toy-tiny", out=tmp_path / "data")
    assert oct((out).stat().st_mode & 0o777) == "0o755"  # shared storage: the group reads it
    _flip(out / "negatives.npy")
    with pytest.raises(DataError, match="negatives.npy does not match its checksum in card.json"):
        load_prepared(out)


# ---- resource limits -------------------------------------------------------------------------------


def test_full_disk_while_saving_a_table_names_it_and_keeps_the_old_one(prepared, monkeypatch):
    assert export_main([*EXPORT, "--chunk", "40"]) == 0
    folder = prepared / "toy-tiny" / "default" / "embeddings" / "zero-shot"
    before = FeatureTable.load(folder)

    def full(path, arr, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(OSError, match=rf"no space left on the device holding {folder} .*keeps its previous"):
        before.save(folder)
    monkeypatch.undo()
    assert np.array_equal(FeatureTable.load(folder).features, before.features)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["zero-shot"]


def test_full_disk_while_checkpointing_names_the_checkpoint(prepared, monkeypatch):
    import accelerate.checkpointing

    settings = ["--dataset", "toy-tiny", "-p", "steps=4", "-p", "batch_size=4", "-p", "checkpoint_every=2"]
    real, calls = accelerate.checkpointing.save, []

    def fills_up(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) > 1:  # the first file of the checkpoint is written, then the disk is full
            raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 76032 vs 75984")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(accelerate.checkpointing, "save", fills_up)
    with pytest.raises(OSError, match=r"writing checkpoint .*checkpoint_0 failed .*is the disk holding .* full"):
        adapt_main(settings)
    assert not list((prepared / "toy-tiny" / "default" / "adapters" / "sda" / "checkpoints").iterdir())


def test_unwritable_out_is_named_not_its_temporary_copy(tmp_path, monkeypatch, capsys):
    import tempfile

    def denied(prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, f"{prefix}x{suffix}"))

    monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix, suffix, dir: denied(prefix, suffix, dir))
    with pytest.raises(OSError) as err:
        prepare_dataset("toy-tiny", out=tmp_path / "data")
    assert f"cannot write {tmp_path / 'data'}: {tmp_path} is not writable" in str(err.value)
    assert ".tmp" not in str(err.value)


# ---- exact messages ----------------------------------------------------------------------------------


def test_non_utf8_line_is_named_exactly(tmp_path):
    from sda_lib.data.amazon import _lines

    path = tmp_path / "sequences.txt"
    lines = [f"user{i} " + " ".join(f"item{j}" for j in range(40)) for i in range(300)]
    path.write_bytes("\n".join(lines[:119]).encode() + b"\nbad \xff line\n" + "\n".join(lines[120:]).encode() + b"\n")
    with pytest.raises(DataError, match=r"sequences.txt:120: not UTF-8 text"):
        list(_lines(path))


def test_custom_csv_encoding_and_timestamp_errors_name_the_row(tmp_path):
    from sda_lib.data.custom import _read_table, _timestamps

    path = tmp_path / "interactions.csv"
    rows = [f"u{i},i{i},2014-03-0{1 + i % 9}" for i in range(2000)]
    path.write_bytes(("user,item,timestamp\n" + "\n".join(rows[:1699]) + "\n").encode() + b"u,\xe9,1\n")
    with pytest.raises(DataError, match=r"interactions.csv:1701: not UTF-8 text"):
        _read_table(path, ["user", "item", "timestamp"])
    values = pd.Series(["2014-03-08", "2014-03-09", "yesterday", "2014-03-10"])
    with pytest.raises(DataError, match=r"first: data row 3, 'yesterday'"):
        _timestamps(values, path)


@pytest.mark.parametrize(
    "main, args, message",
    [
        (adapt_main, ["-p", "steps=abc"], "-p steps='abc': stage 'adapt' expects int for steps"),
        (adapt_main, ["-p", "steps=-5"], "steps, batch_size, grad_accum and checkpoint_every must be >= 1"),
        (export_main, ["--chunk", "-5"], "--d, --batch-size and --chunk must be 1 or more"),
        (data_main, ["prepare", "toy-tiny", "--n-negatives", "-5"], "--n-negatives: must be 1 or more, got -5"),
    ],
)
def test_bad_values_are_usage_errors_not_tracebacks(main, args, message, outputs, capsys):
    argv = args if main is data_main else ["--dataset", "toy-tiny", *args]
    with pytest.raises(SystemExit) as code:
        main(argv)
    assert code.value.code == exits.USAGE and message in capsys.readouterr().err
    assert not outputs.exists()  # nothing was created


def test_decompression_bomb_is_refused_unopened(tmp_path):
    import struct
    import zlib

    from sda_lib.data.images import usable_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"  # a header claiming 30000 x 30000 px, no pixels
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    assert "DecompressionBombError" in usable_image(bomb)


def test_synthetic_dataset_ignores_a_source_and_does_not_record_it(tmp_path):
    out = prepare_dataset("toy-tiny", source="/nonexistent", out=tmp_path / "data")
    assert "/nonexistent" not in (out / "card.json").read_text()
