"""The benchmarks run and report what they promise (their figures are never asserted: no timed tests)."""

import json
import sys

import pytest

from llm.bench import __main__ as bench_cli
from llm.bench import race, suite
from llm.bench.packer import SEQUENCE_LENS, benchmark_packer
from llm.bench.tokenizer import benchmark_tokenizer
from llm.bench.train_step import benchmark_train
from llm.config import compose_run, derived
from tests.conftest import TINY_RUN


def test_train_reports_the_cold_first_step_and_peak_rss(llm_home):
    result = benchmark_train(TINY_RUN, steps=1, warmup=2)
    assert 0 < result["first_step_sec"] <= result["warmup_sec"]
    assert result["peak_rss_mb"] > 0 and result["tokens_per_sec"] > 0 and result["compile"] is False


def test_train_profile_writes_the_operator_table(llm_home, tmp_path):
    benchmark_train(TINY_RUN, steps=1, warmup=1, profile=str(tmp_path / "ops.txt"))
    table = (tmp_path / "ops.txt").read_text()
    assert "Self CPU" in table and "aten::mm" in table  # the model's matmuls are in it


def test_packer_reports_both_packings_at_each_length(llm_home):
    result = benchmark_packer(TINY_RUN, seconds=0.05, documents=60)
    for sequence_len in SEQUENCE_LENS:
        assert result[f"bestfit_{sequence_len}_tokens_per_sec"] > 0 < result[f"stream_{sequence_len}_tokens_per_sec"]
        assert 0 <= result[f"bestfit_{sequence_len}_crop_fraction"] < 1
    assert result["documents"] == 60 and result["vocab_size"] == 512


def test_tokenizer_reports_training_and_encoding_rates(llm_home):
    result = benchmark_tokenizer(TINY_RUN, train_chars=200_000, encode_docs=20)
    assert result["train_chars"] >= 200_000 and result["train_chars_per_sec"] > 0
    assert result["encode_chars_per_sec"] > 0 < result["encode_to_arrays_chars_per_sec"]
    assert result["chars_per_token"] > 1


def test_all_runs_each_benchmark_in_its_own_process_and_prints_one_json_object(llm_home, monkeypatch, capsys):
    monkeypatch.setitem(suite.SUITES, "all", {"train_a": suite.Benchmark("train", TINY_RUN),
                                                  "train_b": suite.Benchmark("train", TINY_RUN)})
    monkeypatch.setattr(sys, "argv", ["llm.bench", "all", "--steps", "1", "--warmup", "1", "--json"])
    bench_cli.main()
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"train_a", "train_b"} and all(r["steps"] == 1 for r in result.values())
    assert result["train_a"]["attention"] == "sdpa"  # TINY_RUN is on the CPU


def test_a_failing_benchmark_is_reported_in_its_place_and_the_rest_still_run(llm_home, monkeypatch, capsys, tmp_path):
    broken = [*TINY_RUN, "attention=fa3"]  # FA3 cannot load on a CPU
    monkeypatch.setitem(suite.SUITES, "gpu", {"broken": suite.Benchmark("train", broken),
                                                  "fine": suite.Benchmark("train", TINY_RUN)})
    saved = tmp_path / "results.json"
    monkeypatch.setattr(sys, "argv", ["llm.bench", "gpu", "--steps", "1", "--warmup", "1", "--json", "--save", str(saved)])
    with pytest.raises(SystemExit, match="failed: broken"):
        bench_cli.main()
    result = json.loads(capsys.readouterr().out)
    assert "fa3" in result["broken"]["error"] and result["fine"]["steps"] == 1
    assert json.loads(saved.read_text()) == result


def test_the_gpu_suite_measures_both_backends_at_d12_and_d20():
    assert set(suite.GPU_SUITE) == {"train_d12_fa3", "train_d12_sdpa", "train_d20_fa3", "train_d20_sdpa"}
    for kind, overrides, _ in suite.GPU_SUITE.values():
        assert kind == "train" and {"device=cuda", "dtype=bfloat16", "train.compile=true"} <= set(overrides)
        plan = derived.plan(compose_run(overrides), world_size=1)
        assert plan.shape.sequence_len == 2048 and plan.grad_accum_steps == 8


# A race of a few steps: experiment=cpu cut down to the tiny shapes.
TINY_RACE = ["model.sequence_len=64", "data.vocab_size=512", "data.tokenizer_max_chars=3000000",
             "train.device_batch_size=4", "train.total_batch_size=256", "budget.num_iterations=4", "eval.every=2",
             "eval.tokens=1024", "eval.sample_every=-1", "checkpoint.every=-1", "device=cpu"]


def test_race_without_a_reference_prints_this_projects_row(llm_home, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["llm.bench", "race", *TINY_RACE, "--json"])
    bench_cli.main()
    [row] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["run"] == "llm" and row["steps"] == 4 and row["dtype"] in ("float32", "bfloat16")
    assert row["wall_sec"] > row["train_sec"] > 0 and row["tokens_per_sec"] > 0 and 0 < row["val_bpb"] < 20


def test_race_hands_the_reference_the_same_run():
    flags = dict(flag.removeprefix("--").split("=") for flag in race.reference_arguments(compose_run(
        [*race.PRESET, "eval.every=0"])))
    plan = derived.plan(compose_run(race.PRESET))
    assert (int(flags["depth"]), int(flags["head-dim"]), int(flags["max-seq-len"])) == (
        plan.shape.depth, plan.shape.head_dim, plan.shape.sequence_len)
    assert int(flags["total-batch-size"]) == plan.total_batch_size and int(flags["num-iterations"]) == 300
    assert flags["eval-every"] == "300" and flags["core-metric-every"] == "-1" and flags["device-type"] == "cpu"
    # base_train's progress line, as its format string prints it.
    line = ("step 00007/00300 (2.33%) | loss: 7.123456 | lrm: 1.00 | dt: 812.50ms | tok/sec: 5,041 | mfu: 0.12 | "
            "epoch: 1 | total time: 0.00m | eta: 4.1m")
    assert race.REFERENCE_STEP.match(line).groups() == ("812.50", "5,041")


@pytest.mark.parametrize("argv, message", [
    (["race", "--reference", "/nonexistent"], "has no scripts/base_train.py"),
    (["train", "--reference", "/tmp"], "options of race only"),
    (["race", "--reference-python", "python3"], "needs --reference"),
])
def test_race_refuses_bad_options(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["llm.bench", *argv])
    with pytest.raises(SystemExit) as exited:
        bench_cli.main()
    assert exited.value.code != 0
    assert message in str(exited.value.code) + capsys.readouterr().err
