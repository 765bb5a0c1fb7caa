"""Embedding a corpus with Ray Data on a local Ray (2 CPUs): vectors equal encode() row for row by
id, a rerun computes only the missing shards, bad rows are reported by id, an actor that dies
mid-run is restarted with its batch retried (one that dies every time ends the job with an error),
and NPU actors claim the mobilint_npu resource."""

from __future__ import annotations

import json
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from conftest import EMBEDDING_FAMILIES
from vectors import cosine_rows

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.corpus import ActorsExhaustedError, embed_corpus, read_corpus
from bertnpu_runtime.data import read_sentences, stsb_file
from bertnpu_runtime.errors import DataError
from bertnpu_runtime.testing import bundle_with_placeholder_mxq


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, resources={"mobilint_npu": 2}, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sentences():
    texts = list(dict.fromkeys(read_sentences(stsb_file("stsb-en-train.csv"))))[:2000]
    assert len(texts) == 2000
    return texts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sentences):
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": [f"doc-{i}" for i in range(len(sentences))], "body": sentences}), path)
    return path


def read_output(folder, id_column="doc_id"):
    table = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("shard-*.parquet"))])
    return dict(zip(table.column(id_column).to_pylist(), table.column("vector").to_pylist()))


def assert_equal_to_encode(tiny_bundle, folder, sentences):
    got = read_output(folder)
    assert len(got) == len(sentences)
    with SentenceEncoder(tiny_bundle, backend="onnx") as encoder:
        expected = encoder.encode(sentences)
    vectors = np.array([got[f"doc-{i}"] for i in range(len(sentences))], np.float32)
    assert cosine_rows(vectors, expected).min() >= 0.99999


def test_two_actors_write_the_vectors_of_encode_by_id(local_ray, tiny_bundle, corpus, sentences, tmp_path):
    out = tmp_path / "vectors"
    result = embed_corpus(tiny_bundle, corpus, out, text_column="body", id_column="doc_id", actors=2, shard_rows=500)
    assert len(result.written) == 4 and not result.skipped and not result.errors
    schema = pq.read_schema(out / "shard-00000.parquet")
    assert schema.names == ["doc_id", "vector", "error"] and schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert_equal_to_encode(tiny_bundle, out, sentences)

    (out / "shard-00002.parquet").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    again = embed_corpus(tiny_bundle, corpus, out, text_column="body", id_column="doc_id", actors=2, shard_rows=500)
    assert [Path(p).name for p in again.written] == ["shard-00002.parquet"] and len(again.skipped) == 3
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in before.items())  # untouched
    assert_equal_to_encode(tiny_bundle, out, sentences)


def test_rows_without_text_are_reported_by_id(local_ray, tiny_bundle, tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"id": 1, "text": "a dog"}, {"id": 2, "text": None}, {"id": 3, "text": "a cat"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = embed_corpus(tiny_bundle, path, tmp_path / "out", actors=1)
    assert result.errors == [(2, "text must be a string, found NoneType")]
    table = pq.read_table(tmp_path / "out" / "shard-00000.parquet")
    assert table.column("vector").to_pylist()[1] is None and table.column("vector").to_pylist()[0] is not None


def test_an_actor_that_dies_mid_run_is_restarted_and_its_batch_retried(
    local_ray, tiny_bundle, corpus, sentences, tmp_path
):
    npu_bundle = bundle_with_placeholder_mxq(tiny_bundle, tmp_path / "npu-bundle")
    marker = tmp_path / "died"
    result = embed_corpus(
        npu_bundle,
        corpus,
        tmp_path / "out",
        text_column="body",
        id_column="doc_id",
        actors=2,
        npu_per_actor=1,
        shard_rows=1000,
        qbruntime_factory="bertnpu_runtime.testing.actors:fake_npu_dying_once",
        qbruntime_factory_options={"marker": str(marker)},
    )
    assert marker.exists()  # an actor did die
    assert len(result.written) == 2 and not result.errors
    assert_equal_to_encode(tiny_bundle, tmp_path / "out", sentences)


def test_an_actor_dying_on_every_batch_ends_the_job_with_an_error(local_ray, tiny_bundle, corpus, tmp_path):
    npu_bundle = bundle_with_placeholder_mxq(tiny_bundle, tmp_path / "npu-bundle")

    def run() -> tuple[BaseException | None, list[warnings.WarningMessage]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                embed_corpus(
                    npu_bundle,
                    corpus,
                    tmp_path / "out",
                    text_column="body",
                    id_column="doc_id",
                    actors=1,
                    npu_per_actor=1,
                    shard_rows=1000,
                    qbruntime_factory="bertnpu_runtime.testing.actors:fake_npu_dying_always",
                )
            except ActorsExhaustedError as exc:
                return exc, caught
        return None, caught

    # Unbounded restarts would never end: wait on a thread, so a regression fails instead of hanging.
    pool = ThreadPoolExecutor(1)
    try:
        error, caught = pool.submit(run).result(timeout=120)
    finally:
        pool.shutdown(wait=False)
    assert error is not None
    assert re.search(r"died 4 times .* 0 shard\(s\) were written .* a rerun computes only the rest", str(error))
    assert not list((tmp_path / "out").glob("*.parquet"))
    assert not [w for w in caught if "ray_remote_args" in str(w.message)]


def test_npu_actors_claim_the_mobilint_npu_resource(local_ray, tiny_bundle, tmp_path):
    npu_bundle = bundle_with_placeholder_mxq(tiny_bundle, tmp_path / "npu-bundle")
    path = tmp_path / "lines.txt"
    path.write_text("a dog\nthe park\n" * 50)
    result = embed_corpus(
        npu_bundle,
        path,
        tmp_path / "out",
        actors=2,
        npu_per_actor=1,
        shard_rows=20,
        qbruntime_factory="bertnpu_runtime.testing.actors:fake_npu_recording_resources",
        qbruntime_factory_options={"folder": str(tmp_path)},
    )
    assert len(result.written) == 5
    claimed = [json.loads(p.read_text()) for p in tmp_path.glob("resources-*.json")]
    assert claimed and all(r.get("mobilint_npu") == 1 for r in claimed)


def test_inputs_are_checked_before_ray_starts(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": 1, "body": "x"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl: has no column 'text'"):
        read_corpus(path, "text", "id")
    with pytest.raises(DataError, match="input does not exist"):
        read_corpus(tmp_path / "missing.parquet", "text", "id")


def test_the_embed_corpus_command(local_ray, tiny_bundle, tmp_path, capsys):
    from bertnpu_runtime.cli import main

    path = tmp_path / "lines.txt"
    path.write_text("a dog runs\nthe cat sits\n")
    out = tmp_path / "out"
    assert main(["embed-corpus", "--bundle", str(tiny_bundle), "--input", str(path), "--output", str(out)]) == 0
    assert "wrote 1 shard(s)" in capsys.readouterr().out
    table = pq.read_table(out / "shard-00000.parquet")
    assert table.column("id").to_pylist() == [0, 1]
    with SentenceEncoder(tiny_bundle, backend="onnx") as encoder:
        np.testing.assert_allclose(
            np.array(table.column("vector").to_pylist()), encoder.encode(["a dog runs", "the cat sits"]), atol=1e-5
        )
    assert main(["embed-corpus", "--bundle", str(tiny_bundle), "--input", str(path), "--output", str(out)]) == 0
    rerun = capsys.readouterr().out
    assert "wrote 0 shard(s)" in rerun and "skipped 1 already written" in rerun


def test_uris_pyarrow_reaches(local_ray, tiny_bundle, tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("a dog runs\nthe cat sits\n")
    result = embed_corpus(tiny_bundle, f"file://{path}", f"file://{tmp_path}/out", actors=1)
    assert len(result.written) == 1 and (tmp_path / "out" / "shard-00000.parquet").is_file()
    assert not list((tmp_path / "out").glob(".*partial*"))


@pytest.mark.parametrize("family", list(EMBEDDING_FAMILIES))
def test_every_embedding_family(local_ray, family_models, family, tmp_path):
    _, bundle = family_models[family]
    texts = ["Un homme joue de la guitare.", "男人在弹吉他。", "남자가 기타를 치고 있다.", "A dog runs 🐕"] * 10
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    result = embed_corpus(bundle, path, tmp_path / "out", actors=1, shard_rows=25)
    assert len(result.written) == 2 and not result.errors
    got = read_output(tmp_path / "out", "id")
    with SentenceEncoder(bundle, backend="onnx") as encoder:
        expected = encoder.encode(texts)
    vectors = np.array([got[i] for i in range(len(texts))], np.float32)
    assert cosine_rows(vectors, expected).min() >= 0.99999
