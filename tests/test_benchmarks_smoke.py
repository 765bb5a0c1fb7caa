"""Each benchmark runs end to end on a handful of sentences with the tiny bundle and writes the JSON
it promises. Benchmarks measure time; these tests never check a time, only that the fields exist
and hold sane values."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_with_imports_blocked

from benchmarks import accuracy, footprint, npu_pipeline, speed
from benchmarks.accuracy import rank_average_ties, spearman
from benchmarks.common import BASELINE, ONNX
from bertnpu_runtime.monitor import npu_status


@pytest.fixture(autouse=True)
def keep_thread_settings():
    """The benchmarks pin threads process-wide (torch, OMP/Rayon variables); later tests get theirs back."""
    import torch

    threads, environment = torch.get_num_threads(), dict(os.environ)
    yield
    torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(environment)


@pytest.fixture
def common_args(tiny_bundle, tiny_model_dir, stsb_dir) -> list[str]:
    return [
        "--bundle",
        str(tiny_bundle),
        "--model",
        str(tiny_model_dir),
        "--stsb-dir",
        str(stsb_dir),
        "--quick",
        "--threads",
        "1",
    ]


def test_spearman_matches_a_hand_computed_example():
    gold = np.array([0.0, 1.0, 2.0, 2.0, 3.0])  # ranks 1, 2, 3.5, 3.5, 5: the tie shares the mean rank
    predicted = np.array([0.2, 0.1, 0.5, 0.7, 0.9])  # ranks 2, 1, 3, 4, 5
    np.testing.assert_array_equal(rank_average_ties(gold), [1, 2, 3.5, 3.5, 5])
    # Deviations from the mean rank 3: (-2, -1, .5, .5, 2) and (-1, -2, 0, 1, 2):
    # covariance sum 8.5, squared sums 9.5 and 10.
    assert spearman(predicted, gold) == pytest.approx(8.5 / np.sqrt(9.5 * 10))
    assert spearman(gold, gold) == pytest.approx(1.0)
    assert spearman(gold, -gold) == pytest.approx(-1.0)


def test_speed_writes_every_workload(common_args, tmp_path):
    out = tmp_path / "speed.json"
    result = speed.main(common_args + ["--limit", "12", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert out.with_suffix(".png").stat().st_size > 0
    assert result["contenders"] == [BASELINE, ONNX]
    import torch

    assert torch.get_num_threads() == 1  # --threads 1: the PyTorch contender runs on as many as the others
    assert set(result["skipped"]) == {"bertnpu-onnx-int8", "bertnpu-npu"}
    stsb = {row["contender"]: row for row in result["stsb_dev"]}
    assert stsb[BASELINE]["vs_baseline"] == 1.0 and stsb[ONNX]["sentences_per_s"] > 0
    assert {row["batch_size"] for row in result["batch_sizes"]} == set(speed.BATCH_SIZES)
    assert all(row["p95_ms"] >= row["p50_ms"] > 0 for row in result["single_sentence"] + result["batch_sizes"])
    assert all(0 < row["tokens"] <= 16 for row in result["length_sweep"])
    stages = result["stages"][ONNX]
    assert set(stages) == {"tokenize", "embed", "encoder", "pool", "host", "total"}
    assert stages["host"]["us_per_sentence_median"] > 0
    alone = result["stages"][speed.HOST_ONLY]
    assert set(alone) == {"tokenize", "embed", "pool", "host"} and alone["host"]["us_per_sentence_median"] > 0


def test_accuracy_reports_spearman_and_cosines(common_args, tmp_path):
    result = accuracy.main(common_args + ["--limit", "12", "--out", str(tmp_path / "accuracy.json")])
    rows = {row["contender"]: row for row in result["rows"]}
    assert result["pairs"] == 12
    assert -1 <= rows[BASELINE]["spearman"] <= 1
    # The ONNX path reproduces the PyTorch vectors, so the random tiny model's Spearman matches too.
    assert rows[ONNX]["cosine_to_reference_min"] > 0.9999
    assert abs(rows[ONNX]["spearman_minus_reference"]) < 1e-6


def test_npu_pipeline_compares_with_the_bound(common_args, tmp_path):
    args = [
        "--limit",
        "20",
        "--copies",
        "2",
        "--cores",
        "1",
        "2",
        "--latency-us",
        "100",
        "300",
        "--out",
        str(tmp_path / "npu.json"),
    ]
    result = npu_pipeline.main(common_args + args)
    assert (result["sentences"], result["copies"]) == (80, 2)  # 20 pairs, twice over
    assert [(row["latency_us"], row["npu_cores"]) for row in result["rows"]] == [(100, 1), (100, 2), (300, 1), (300, 2)]
    for row in result["rows"]:
        assert row["bound"] == min(row["host_rate"], row["npu_rate"])
        assert row["npu_rate"] == pytest.approx(row["npu_cores"] / (row["latency_us"] * 1e-6))
        # The double ran at this row's latency on every copy: each call lasts at least its sentences x latency.
        assert row["npu_busy_s_per_core"] >= row["npu_modelled_s_per_core"] > 0
        assert row["achieved_vs_bound"] > 0 and row["infer_calls_per_encode"] >= 1
        assert (
            row["prepared_vs_bound"] == pytest.approx(row["prepared_sentences_per_s"] / row["bound"])
            and row["prepared_vs_bound"] > 0
        )
        # Each core's wall time splits into modelled NPU time and the four kinds of time lost.
        lost = sum(row[name] for name in npu_pipeline.LOSSES)
        assert row["wall_ms_per_encode"] == pytest.approx(1e3 * row["npu_modelled_s_per_core"] + lost, rel=1e-6)
        assert all(row[name] >= 0 for name in ("before_first_call_ms", "between_calls_ms", "after_last_call_ms"))
        assert row["host_cpu_us_per_sentence"] > 0 and row["core_threads_cpu_us_per_sentence"] > 0
        assert row["host_page_faults_per_encode"] >= 0


def test_npu_pipeline_runs_without_torch(common_args, tmp_path):
    """It measures the runtime in a process like a deployment's: one without torch or transformers."""
    args = common_args + ["--limit", "8", "--cores", "1", "--out", str(tmp_path / "npu.json")]
    printed = run_with_imports_blocked(
        ("torch", "transformers", "sentence_transformers"),
        f"""
        from benchmarks import npu_pipeline
        result = npu_pipeline.main({args!r})
        print("ok", len(result["rows"]))
        """,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert printed.strip().endswith("ok 1")


@pytest.fixture
def device_args(common_args, tiny_bundle, tmp_path) -> list[str]:
    """npu_pipeline --device on a copy of the tiny bundle with a placeholder model.mxq, 1 and 2 cores."""
    from bertnpu_runtime.testing.bundles import bundle_with_placeholder_mxq

    args = list(common_args)
    args[args.index("--bundle") + 1] = str(bundle_with_placeholder_mxq(tiny_bundle, tmp_path / "npu-bundle"))
    return args + ["--device", "--limit", "40", "--cores", "1", "2", "--out", str(tmp_path / "npu.json")]


def test_npu_pipeline_on_a_device_measures_the_cores_rate(device_args, tiny_bundle):
    from bertnpu_runtime.testing import FakeNpu

    # 2 ms a call, as in the GIL test below: at 500 us a call a loaded CI machine's thread wake-ups
    # alone took the second core's share to 0.63 (this VM's scheduler, not the double's GIL).
    latency = 2e-3
    fake = FakeNpu(hidden_size=npu_pipeline._hidden_size(tiny_bundle), latency_s=latency)
    result = npu_pipeline.main(device_args, qbruntime_module=fake)
    assert (result["npu"], result["latencies_us_per_sentence"], result["sentences"]) == ("device 0", None, 80)
    rows = {row["npu_cores"]: row for row in result["rows"]}
    assert list(rows) == [1, 2]
    for cores, row in rows.items():
        assert row["bound"] == min(row["host_rate"], row["npu_rate"])
        # Measured on the device: its calls last at least their sentences x latency, so no faster than this.
        assert 0 < row["npu_rate"] <= cores / latency
        assert row["achieved_vs_bound"] > 0 and row["host_cpu_us_per_sentence"] > 0
    assert {call.core for call in fake.calls} == {(0, 0), (0, 1)}  # the 2-core encoder ran on both
    assert not fake.busy_cores()  # each core count's encoder was closed before the next was opened
    # The per-core ratio is each row's rate per core over the 1-core row's; how high it comes out
    # measures this machine's thread wake-ups, a benchmark's business, not a test's.
    assert rows[1]["npu_rate_per_core_vs_1_core"] == 1.0
    expected = rows[2]["npu_rate"] / 2 / rows[1]["npu_rate"]
    assert rows[2]["npu_rate_per_core_vs_1_core"] == pytest.approx(expected, rel=0.01)


def test_npu_pipeline_on_a_device_traces_and_monitors(device_args, tiny_bundle, tmp_path):
    import json

    from bertnpu_runtime.testing import FakeNpu

    fake = FakeNpu(hidden_size=npu_pipeline._hidden_size(tiny_bundle), latency_s=1e-4)
    result = npu_pipeline.main([*device_args, "--trace", str(tmp_path / "trace.json")], qbruntime_module=fake)
    for cores in (1, 2):
        events = json.loads((tmp_path / f"trace-{cores}cores.json").read_text())["traceEvents"]
        assert len({event["tid"] for event in events}) == cores
    available = npu_status()["available"]  # mobilint-ml on this host, card or not
    assert all(row["npu_monitor"]["available"] == available for row in result["rows"])


def test_npu_pipeline_groups_sentences_when_asked(common_args):
    single = npu_pipeline.main([*common_args, "--limit", "40", "--cores", "1", "--latency-us", "50"])
    grouped = npu_pipeline.main(
        [*common_args, "--limit", "40", "--cores", "1", "--latency-us", "50", "--group-sentences"]
    )
    assert single["rows"][0]["infer_calls_per_encode"] == single["sentences"]  # one sentence per call, the default
    assert grouped["group_sentences"] and grouped["rows"][0]["infer_calls_per_encode"] < grouped["sentences"] / 2


def test_npu_pipeline_on_a_device_says_what_is_missing(common_args, tmp_path):
    with pytest.raises(SystemExit, match="has no model.mxq"):
        npu_pipeline.main(common_args + ["--device", "--out", str(tmp_path / "npu.json")])
    assert not (tmp_path / "npu.json").exists()


def test_npu_pipeline_on_a_device_refuses_a_modelled_latency(common_args, tmp_path, capsys):
    with pytest.raises(SystemExit):
        npu_pipeline.main(common_args + ["--device", "--latency-us", "100", "--out", str(tmp_path / "npu.json")])
    assert "--latency-us models the test double's NPU" in capsys.readouterr().err


def test_footprint_runs_fresh_processes(common_args, tmp_path):
    result = footprint.main(common_args + ["--out", str(tmp_path / "footprint.json")])
    rows = {row["contender"]: row for row in result["rows"]}
    assert set(rows) == {"python (interpreter only)", BASELINE, ONNX}
    assert rows[BASELINE]["torch_imported"] and not rows[ONNX]["torch_imported"]
    assert rows[ONNX]["peak_rss_mib"] > rows["python (interpreter only)"]["peak_rss_mib"] > 0


def test_interleave_blocks_runs_each_task_in_blocks_and_rotates():
    from benchmarks.common import interleave_blocks

    log: list[tuple[str, int]] = []
    tasks = {name: (lambda i, name=name: log.append((name, i))) for name in ("a", "b")}
    seconds = interleave_blocks(tasks, calls=3, rounds=2, warmup=1)
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3 * 2, "b": 3 * 2}
    timed = log[2:]  # after one warm-up call each
    assert timed == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
        ("b", 2),
        ("b", 3),
        ("b", 4),
        ("b", 5),
        ("a", 3),
        ("a", 4),
        ("a", 5),
    ]


@pytest.mark.parametrize("module", [accuracy, footprint, npu_pipeline, speed])
def test_help_names_the_command_to_type(module, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks.{module.__name__.split('.')[-1]} ")


def test_serve_benchmark_runs_a_live_server(common_args, tmp_path, monkeypatch):
    from benchmarks import serve

    monkeypatch.setattr(serve.shutil, "which", lambda name: None)  # infinity is left out, as where it is not installed
    out = tmp_path / "serve.json"
    result = serve.main(
        [*common_args, "--limit", "40", "--concurrency", "1", "4", "--texts", "1", "8", "--out", str(out)]
    )
    rows = {(row["texts"], row["concurrency"]): row for row in result["rows"]}
    assert set(rows) == {(1, 1), (1, 4), (8, 1), (8, 4)}
    for (texts, _), row in rows.items():
        assert row["server"] == "bertnpu serve" and row["errors"] == 0 and row["requests"] > 0
        assert row["sentences_per_s"] == pytest.approx(row["requests_per_s"] * texts)
        assert row["p50_ms"] <= row["p99_ms"] and row["vs_infinity"] is None
        if sys.platform == "linux":  # the server's CPU time, from /proc in 10 ms ticks: a round's may be 0
            assert row["server_cpu_ms_per_request"] > 0
            assert 0 <= row["server_loop_cpu_ms_per_request"] <= row["server_cpu_ms_per_request"]
        ceilings = [r["in_process_sentences_per_s"] for r in row["rounds"]]  # measured in every round
        assert len(ceilings) == len(row["rounds"]) and min(ceilings) > 0
        assert row["vs_in_process"] == pytest.approx(
            statistics.median(r["sentences_per_s"] / c for r, c in zip(row["rounds"], ceilings))
        )
    if sys.platform == "linux":  # the event loop's share, in ticks too: over all cases, some
        assert sum(row["server_loop_cpu_ms_per_request"] for row in rows.values()) > 0
    assert len(json.loads(out.read_text())["rows"]) == 4


def test_rerank_benchmark_runs_on_a_reranker_bundle(rerankers, tmp_path):
    from benchmarks import rerank

    folder, bundle = rerankers["bert-1"]
    out = tmp_path / "rerank.json"
    result = rerank.main(["--bundle", str(bundle), "--model", str(folder), "--quick", "--out", str(out)])
    contenders = [row["contender"] for row in result["rate"]]
    assert contenders == ["sentence-transformers", "bertnpu-onnx", "bertnpu-onnx-int8"]
    assert all(row["pairs_per_s"] > 0 for row in result["rate"])
    assert result["rate"][1]["max_score_difference"] <= 1e-4  # float32 ONNX scores are sentence-transformers'
    assert {row["documents"] for row in result["latency"]} == {20, 100}
    assert json.loads(out.read_text())["benchmark"] == "rerank"


def test_npu_pipeline_at_latency_zero_measures_the_host_alone(common_args):
    """--latency-us 0 models an infinitely fast NPU: the bound is the host rate (it raised ZeroDivisionError)."""
    result = npu_pipeline.main([*common_args, "--limit", "16", "--cores", "1", "--latency-us", "0"])
    [row] = result["rows"]
    assert row["npu_rate"] is None and row["limited_by"] == "host" and row["bound"] == row["host_rate"]
    with pytest.raises(SystemExit):
        npu_pipeline.main([*common_args, "--latency-us", "-5"])


def test_serve_benchmark_beside_a_baseline_checkout(common_args, tmp_path, monkeypatch):
    """A closed-loop case and the mixed-load case, with this checkout also served as a "baseline"
    (the before/after setup): vs_baseline pairs the two servers' rates round by round."""
    from benchmarks import serve

    monkeypatch.setattr(serve.shutil, "which", lambda name: None)
    checkout = Path(serve.__file__).resolve().parents[1]
    result = serve.main(
        [*common_args, "--limit", "40", "--texts", "1", "--concurrency", "2", "--repeats", "3"]
        + ["--mixed", "1", "2", "--big-texts", "4", "--seconds", "1"]
        + ["--baseline", str(checkout), "--out", str(tmp_path / "serve.json")]
    )
    head, baseline = result["rows"]
    assert (head["server"], baseline["server"]) == ("bertnpu serve", "bertnpu serve (baseline)")
    paired = [a["sentences_per_s"] / b["sentences_per_s"] for a, b in zip(head["rounds"], baseline["rounds"])]
    assert len(paired) == 3 and head["vs_baseline_rounds"] == pytest.approx(paired)
    assert head["vs_baseline"] == pytest.approx(statistics.median(paired))
    assert baseline["vs_baseline"] is None and head["vs_infinity"] is None
    assert {row["server"] for row in result["mixed"]} == {"bertnpu serve", "bertnpu serve (baseline)"}
    for row in result["mixed"]:
        assert row["errors"] == 0 and row["long_texts_per_s"] > 0 and row["small_requests_per_s"] > 0
        assert row["small_p50_ms"] <= row["small_p99_ms"]
        assert 0 <= row["small_queue_p50_ms"] <= row["small_total_p50_ms"]  # from the server's timing headers


def test_serve_benchmark_mixed_load_with_an_open_loop_small_stream(common_args, tmp_path, monkeypatch):
    from benchmarks import serve

    monkeypatch.setattr(serve.shutil, "which", lambda name: None)
    result = serve.main(
        [*common_args, "--limit", "40", "--texts", "--mixed", "1", "0", "--big-texts", "4", "--seconds", "1"]
        + ["--small-rate", "20", "--out", str(tmp_path / "serve.json")]
    )
    (row,) = result["mixed"]
    assert row["errors"] == 0 and row["long_texts_per_s"] > 0
    assert 0 < row["small_requests_per_s"] <= 25  # about 20 a second were sent, never more


def test_batch_tokens_measures_encode_with_and_without_the_limit(common_args, tmp_path):
    from benchmarks import batch_tokens
    from bertnpu_runtime.backends.onnx import BATCH_TOKENS

    out = tmp_path / "batch_tokens.json"
    result = batch_tokens.main([*common_args, "--chars", "100", "400", "--out", str(out)])
    assert [row["chars"] for row in result["rows"]] == [100, 400]
    for row in result["rows"]:
        assert row["mean_tokens"] > 0 and row["texts_per_s_32_texts"] > 0
        assert row["ratio"] == pytest.approx(
            row[f"texts_per_s_batch_tokens_{BATCH_TOKENS}"] / row["texts_per_s_32_texts"]
        )
    assert json.loads(out.read_text())["benchmark"] == "batch_tokens"


def test_a_baseline_server_imports_the_baseline_checkouts_code(tmp_path):
    """`--baseline DIR` runs DIR's bertnpu_runtime, not this checkout's (run from here, `-m` put the
    working directory first on sys.path and every baseline ran this checkout's code)."""
    from benchmarks import serve

    package = tmp_path / "bertnpu_runtime"
    package.mkdir()
    (package / "__init__.py").write_text("")
    where = serve._code_from(tmp_path)
    found = subprocess.run(
        [sys.executable, "-c", "import bertnpu_runtime; print(bertnpu_runtime.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        **where,
    ).stdout.strip()
    assert Path(found).resolve() == (package / "__init__.py").resolve()
