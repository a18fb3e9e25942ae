"""The benchmark runner: its registry, printed records, suite file and measuring tools (no timing
assertions: the numbers depend on the machine)."""

import json
import statistics

import numpy as np
import pytest

import benchmarks as bench


def test_benchmark_prints_table_then_its_json_record_last(capsys):
    record = bench.run_benchmark("moda-vs-lora", preset="tiny", repeats=3, warmup=1, batch_size=2)
    lines = capsys.readouterr().out.strip().splitlines()
    printed = json.loads(lines[-1])
    assert printed == record
    assert any("moda step" in line for line in lines) and any("lora step" in line for line in lines)
    assert len(printed["moda_samples_ms"]) == len(printed["lora_samples_ms"]) == 3
    assert printed["moda_ms"] == statistics.median(printed["moda_samples_ms"])
    assert printed["lora_ms"] == statistics.median(printed["lora_samples_ms"])
    assert printed["ratio"] == pytest.approx(printed["moda_ms"] / printed["lora_ms"], rel=1e-3)
    cpu = [statistics.median(printed[f"{k}_cpu_samples_ms"]) for k in ("moda", "lora")]
    assert printed["cpu_ratio"] == pytest.approx(cpu[0] / cpu[1], rel=1e-2) and len(printed["moda_cpu_samples_ms"]) == 3
    assert printed["status"] == ("PASS" if printed["ratio"] <= bench.MODA_VS_LORA_TARGET else "ABOVE")
    assert printed["layers"] == 2 * 7  # tiny: 2 layers x (q, k, v, o, gate, up, down)


def test_unknown_benchmark_names_the_registered_ones(capsys):
    with pytest.raises(ValueError, match="unknown benchmark 'nope'") as err:
        bench.run_benchmark("nope")
    assert all(name in str(err.value) for name in bench.BENCHMARKS)
    with pytest.raises(SystemExit) as exit_:
        bench.main(["nope"])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "invalid choice: 'nope'" in message and all(name in message for name in bench.BENCHMARKS)


def test_bad_option_names_the_flag():
    with pytest.raises(ValueError, match="--batch-size must be >= 2, got 1"):
        bench.Options(batch_size=1)


def test_settings_left_open_take_the_benchmarks_defaults():
    options = bench.Options(batch_size=4)
    assert (options.repeats, options.warmup) == (None, None)
    gpu = options.defaults(**bench.GPU_ROUNDS)
    assert (gpu.repeats, gpu.warmup, gpu.batch_size) == (3, 2, 4)  # what is given stays
    cpu = bench.Options().defaults(**bench.CPU_ROUNDS)
    assert (cpu.repeats, cpu.warmup, cpu.batch_size) == (15, 2, 8)


def test_all_run_writes_machine_info_and_every_result(outputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "BENCHMARKS", {"data-prepare": bench.BENCHMARKS["data-prepare"]})
    missing = tmp_path / "no-beauty"
    assert bench.main(["--dataset", "toy-tiny", "--beauty", str(missing), "--threads", "1"]) == 0
    files = list((outputs / "bench").glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    machine = saved["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] == 1
    assert {"platform", "python", "torch", "transformers", "peft"} <= set(machine)
    assert saved["options"]["dataset"] == "toy-tiny"
    result = saved["results"]["data-prepare"]
    assert set(result["datasets"]) == {"toy-tiny"}  # beauty skipped: its folder is missing
    prepared = result["datasets"]["toy-tiny"]
    assert prepared["seconds"] > 0 and prepared["peak_rss_mb"] > 0 and prepared["items"] > 0
    out = capsys.readouterr().out
    assert f"beauty skipped: {missing}" in out and "== summary" in out and str(files[0]) in out


def test_fresh_process_peak_memory_is_the_targets_own():
    mib = 2**20
    small = bench.in_fresh_process("numpy:ones", {"shape": 1, "dtype": "uint8"})
    large = bench.in_fresh_process("numpy:ones", {"shape": 96 * mib, "dtype": "uint8"})
    assert small["result"] is None and small["seconds"] >= 0
    assert large["peak_rss_mb"] - small["peak_rss_mb"] == pytest.approx(96, abs=8)


def test_peak_rss_restarts_from_the_current_rss():
    """In a fresh interpreter: after a long test session the allocator may serve a block from
    memory that is already resident, which would not move the peak."""
    import subprocess
    import sys

    check = """
import numpy as np
import benchmarks as bench

def rss_mb():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 2**10

if not bench.reset_peak_rss():
    raise SystemExit(77)
block = np.ones(96 * 2**20, dtype=np.uint8)
del block  # a large numpy block is its own mapping: freeing it returns it to the system
assert bench.peak_rss_mb() - rss_mb() > 90, (bench.peak_rss_mb(), rss_mb())
assert bench.reset_peak_rss()
assert abs(bench.peak_rss_mb() - rss_mb()) <= 4, (bench.peak_rss_mb(), rss_mb())
"""
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    if done.returncode == 77:
        pytest.skip("no /proc/self/clear_refs here")
    assert done.returncode == 0, done.stderr


def test_interleaved_swaps_the_order_and_drops_warmup():
    calls, cpu = [], {}

    def busy():
        return sum(range(200_000))  # some CPU time to count

    samples = bench.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append(busy() and "b")}, repeats=3, warmup=1, cpu=cpu
    )
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(s) for s in samples.values()] == [len(s) for s in cpu.values()] == [3, 3]
    assert all(t >= 0 for s in samples.values() for t in s)
    assert sum(cpu["b"]) > sum(cpu["a"]) >= 0


def test_gpu_check_refuses_without_cuda(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["gpu"]) == 1
    captured = capsys.readouterr()
    assert "no CUDA device" in captured.err and "--preset small --device cpu" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["unavailable"].startswith("no CUDA device")


def test_gpu_check_dry_run_on_cpu(monkeypatch, capsys):
    """The GPU check's script end to end on CPU with the tiny preset: every phase runs, with few
    steps and synthetic items. MoDA without checkpointing is made to run out of memory, as it may
    on a GPU smaller than the estimate asks for: recorded, not fatal; the verdict then falls back
    to the ratio with checkpointing, and the export to that run's adapter."""
    import torch

    from sda_lib.method import adapt

    train_adapter = adapt.train_adapter

    def out_of_memory_without_checkpointing(backbone, dataset, config, out, **kwargs):
        if config.adapter == "moda" and not config.gradient_checkpointing:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return train_adapter(backbone, dataset, config, out, **kwargs)

    monkeypatch.setattr(adapt, "train_adapter", out_of_memory_without_checkpointing)
    monkeypatch.setattr(bench.gpu, "GPU_ITEMS", 12)
    record = bench.run_benchmark("gpu", preset="tiny", device="cpu", batch_size=4, repeats=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == record
    assert (record["warmup"], record["repeats"], record["batch_items"]) == (2, 2, 4)  # warm-up: the gpu default
    runs = record["runs"]
    assert runs.pop("moda step")["out_of_memory"] == "CUDA out of memory. Tried to allocate 1.00 GiB"
    assert set(runs) == {"moda step, checkpointing", "lora step", "lora step, checkpointing"}
    for label, run in runs.items():
        assert len(run["samples_s"]) == 2 and run["median_s"] == statistics.median(run["samples_s"]) > 0
        assert run["peak_gib"] > 0.1  # CPU: the process's resident high-water mark during the run
        # the estimate that decides checkpointing, beside each run without it
        assert ("estimated_gib" in run) == (label == "lora step") and run.get("estimated_gib", 1) > 0
    moda, lora = runs["moda step, checkpointing"]["median_s"], runs["lora step, checkpointing"]["median_s"]
    assert record["ratio"] == record["ratio_with_checkpointing"] == pytest.approx(moda / lora, rel=1e-3)
    assert record["ratio_without_checkpointing"] is None and "(checkpointing)" in record["headline"]
    assert record["headline"].startswith("MoDA step out of memory")
    assert record["dtype"] == "float32" and record["weights_gib"] > 0 and record["params_b"] > 0
    # 4 items: 4 text + 4 image rows; each 224 px image is 16 x 16 patches of 14 px.
    assert record["image_patches_per_step"] == 4 * 256
    assert record["tokens_per_step"] <= record["padded_tokens_per_step"]
    export = record["export"]
    assert export["items"] == 12 and export["dims"] == {
        "text": 64,
        "image": 64,
        "features_text": 12,
        "features_image": 12,
    }
    assert min(export["items_per_s"], export["text_items_per_s"], export["image_items_per_s"]) > 0
    assert any(line.strip().startswith("lora step, checkpointing") for line in lines)


def test_padded_slots_by_hand():
    """Prompts of 1, 3, 1, 3 tokens in batches of 2: item order pads both batches to 3 (12 slots),
    sorting pairs like with like (1+1 and 3+3: 8 slots); sorting stays inside each chunk."""
    from benchmarks.export import padded_slots

    lengths = np.array([1, 3, 1, 3])
    assert padded_slots(lengths, batch=2, chunk=4, bucketed=False) == 12
    assert padded_slots(lengths, batch=2, chunk=4, bucketed=True) == 8
    assert padded_slots(lengths, batch=2, chunk=2, bucketed=True) == 12


def test_synthetic_catalogue_keeps_beauty_proportions():
    from benchmarks.scaling import MEAN_LENGTH, USERS_PER_ITEM, synthetic_catalogue

    catalogue = synthetic_catalogue(2000)
    lengths = catalogue.interactions.groupby("user_id").size()
    assert len(lengths) == round(2000 * USERS_PER_ITEM) and lengths.min() >= 5
    assert abs(lengths.mean() - MEAN_LENGTH) < 0.3
    assert set(catalogue.interactions["item_id"]) <= set(catalogue.items["item_id"])


def test_scaling_figure_reaches_every_run_report(outputs):
    """The scaling benchmark's figure is written as HTML and as JSON beside it; a run's report then
    shows it in its own section, and a report without it has no such section."""
    from benchmarks.scaling import FIGURE, write_figure
    from sda_lib.workbench.report import build_report

    run = outputs / "toy" / "default"
    run.mkdir(parents=True)
    assert "Scaling of this workbench" not in build_report(run).read_text()
    rows = [
        {"items": n, "prepare s": n / 1e3, "epoch s": n / 500, "full ranking s": (n / 1e3) ** 2, "export s (tiny)": 1.0}
        | {"prepare peak MiB": 100.0, "train peak MiB": 200.0, "ranking peak MiB": 300.0}
        for n in (10_000, 100_000)
    ]
    figure = outputs / "bench" / FIGURE
    write_figure(rows, {"full ranking s": 2.0}, figure, "test machine")
    assert figure.is_file() and json.loads(figure.with_suffix(".json").read_text())["data"]
    page = build_report(run).read_text()
    assert "Scaling of this workbench" in page and "full ranking s (k=2.0)" in page


def test_time_to_quality_curves_figure(tmp_path):
    """The time-to-quality figure plots each library's validation curve against wall minutes, with
    RecBole's best as a line, and lands whole at its path."""
    from benchmarks.recsys import write_curves

    history = {
        "ours": {"valid": [0.01, 0.05], "wall": [30.0, 60.0]},
        "recbole": {"valid": [0.02, 0.04], "wall": [240.0, 480.0]},
    }
    path = tmp_path / "bench" / "curves.html"
    path.parent.mkdir()
    figure = write_curves(history, 0.04, path, "toy")
    assert [(t.name, list(t.x), list(t.y)) for t in figure.data] == [
        ("ours", [0.5, 1.0], [0.01, 0.05]),
        ("recbole", [4.0, 8.0], [0.02, 0.04]),
    ]
    assert "RecBole's best 0.0400" in path.read_text() and not list(path.parent.glob("*.tmp*"))
