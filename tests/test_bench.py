"""The benchmark runner: its registry, printed records, suite file and measuring tools (no timing
assertions: the numbers depend on the machine)."""

import json
import statistics

import pytest

from sda_lib import bench


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


def test_interleaved_swaps_the_order_and_drops_warmup():
    calls = []
    samples = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                repeats=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(s) for s in samples.values()] == [3, 3]
    assert all(t >= 0 for s in samples.values() for t in s)
