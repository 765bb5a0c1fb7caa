"""`bertnpu embed-corpus`: a corpus (Parquet, JSONL or a text file of lines) to Parquet shards of
ids and vectors, with Ray Data spreading the work over actors (the `ray` extra).

The input is cut into shards of `shard_rows` rows in input order; shard k is written to
OUTPUT/shard-0000k.parquet (to a temporary name, then renamed), so a shard file is complete or
absent. A rerun skips the shards already written: after a crash or a preemption only the missing
ones are computed. Rows whose text is not a string are written with a null vector and the reason in
the `error` column, and reported.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import BertNpuError, DataError
from .options import BackendOptions
from .ray import ACTOR_RESTARTS, ERROR_COLUMN, EmbedBatch, cpu_actor_options, npu_actor_options

logger = logging.getLogger("bertnpu")


class ActorsExhaustedError(BertNpuError):
    """An encoder actor kept dying after its restarts; the shards written before it stay."""


SHARD_COLUMN = "__bertnpu_shard"


@dataclass
class CorpusResult:
    written: list[str] = field(default_factory=list)  # shard paths, inside the output's filesystem
    skipped: list[str] = field(default_factory=list)
    errors: list[tuple[Any, str]] = field(default_factory=list)  # (id, reason) of rows without a vector


def read_corpus(path: str | Path, text_column: str, id_column: str) -> Any:
    """The input as a pyarrow Table with `id_column` and `text_column`: a local path or any URI
    pyarrow's filesystems reach (file://, s3://, gs://, hdfs://). A text file of lines gets ids 0, 1, ..."""
    import pyarrow as pa
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    fs, where = _filesystem(path)
    info = fs.get_file_info(where)
    if info.type == pa.fs.FileType.NotFound:
        raise DataError(path, "input does not exist")
    try:
        if info.type == pa.fs.FileType.Directory or where.endswith((".parquet", ".pq")):
            table = pq.read_table(where, filesystem=fs)
        elif where.endswith((".jsonl", ".json", ".ndjson")):
            with fs.open_input_stream(where) as stream:
                table = pa_json.read_json(stream)
        else:
            with fs.open_input_stream(where) as stream:
                lines = stream.read().decode("utf-8").splitlines()
            table = pa.table({id_column: pa.array(range(len(lines)), pa.int64()), text_column: lines})
    except (OSError, UnicodeDecodeError, pa.ArrowInvalid) as exc:
        raise DataError(path, f"cannot be read as Parquet, JSONL or UTF-8 text ({exc})") from exc
    for column in (id_column, text_column):
        if column not in table.column_names:
            raise DataError(path, f"has no column {column!r}; its columns are {table.column_names}")
    return table.select([id_column, text_column])


def _filesystem(path: str | Path) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs

    text = str(path)
    if "://" in text:
        return pyarrow.fs.FileSystem.from_uri(text)
    return pyarrow.fs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def embed_corpus(
    bundle_dir: str | Path,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    text_column: str = "text",
    id_column: str = "id",
    ray_address: str | None = None,
    actors: int = 1,
    npu_per_actor: float = 0,
    batch_size: int | None = None,
    shard_rows: int = 10_000,
    options: BackendOptions | None = None,
    qbruntime_factory: str | None = None,
    qbruntime_factory_options: dict[str, Any] | None = None,
) -> CorpusResult:
    """Embed the corpus at `input_path` into Parquet shards in `output_dir`; see the module doc.
    `npu_per_actor` > 0 makes each actor claim that much of the `mobilint_npu` resource and run
    on the NPU; 0 runs ONNX Runtime on CPU actors (one thread each unless `options` says). Without
    `ray_address`, a local Ray is started. qbruntime_factory(_options): see EmbedBatch."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.fs
    import ray

    fs, output = _filesystem(output_dir)
    fs.create_dir(output, recursive=True)
    table = read_corpus(input_path, text_column, id_column)
    result = CorpusResult()
    pieces, expected = [], {}
    for shard, start in enumerate(range(0, table.num_rows, shard_rows)):
        target = f"{output}/shard-{shard:05d}.parquet"
        if fs.get_file_info(target).type == pa.fs.FileType.File:
            result.skipped.append(target)
            continue
        piece = table.slice(start, shard_rows)
        pieces.append(piece.append_column(SHARD_COLUMN, pa.array([shard] * piece.num_rows, pa.int32())))
        expected[shard] = piece.num_rows
    if not pieces:
        return result

    if not ray.is_initialized():
        ray.init(address=ray_address, logging_level=logging.WARNING, include_dashboard=False)
    options = options or BackendOptions()
    if npu_per_actor > 0:
        options = replace(options, backend="npu") if options.backend == "auto" else options
        remote = npu_actor_options(npu_per_actor)
    else:
        options = replace(options, backend="onnx") if options.backend == "auto" else options
        if options.onnx.num_threads is None:  # one CPU per actor
            options = replace(options, onnx=replace(options.onnx, num_threads=1))
        remote = cpu_actor_options()
    with warnings.catch_warnings():
        # Bounded restarts have no named map_batches parameter yet (pyproject keeps ray below the
        # release that drops the keywords); the warning would only tell the user what they cannot change.
        warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated", category=DeprecationWarning)
        dataset = ray.data.from_arrow(pieces).map_batches(
            EmbedBatch,
            fn_constructor_kwargs={
                "bundle_dir": str(bundle_dir),
                "text_column": text_column,
                "batch_size": batch_size,
                "options": options,
                "qbruntime_factory": qbruntime_factory,
                "qbruntime_factory_options": qbruntime_factory_options,
            },
            batch_format="pyarrow",
            batch_size=1024,
            compute=ray.data.ActorPoolStrategy(size=actors),
            **remote,
        )
    gathered: dict[int, list[Any]] = {}
    try:
        batches: Iterable[Any] = dataset.iter_batches(batch_format="pyarrow", batch_size=None)  # pyarrow Tables
        for batch in batches:
            for shard in set(batch.column(SHARD_COLUMN).to_pylist()):
                rows = batch.filter(pc.equal(batch.column(SHARD_COLUMN), shard))
                gathered.setdefault(shard, []).append(rows)
                if sum(part.num_rows for part in gathered[shard]) == expected[shard]:
                    result.written.append(
                        _write_shard(fs, output, shard, pa.concat_tables(gathered.pop(shard)), id_column, result)
                    )
    except ray.exceptions.ActorDiedError as exc:
        raise ActorsExhaustedError(
            f"an encoder actor died {ACTOR_RESTARTS + 1} times (restarted {ACTOR_RESTARTS} times, each retrying its batch); "
            f"{len(result.written)} shard(s) were written to {output} and a rerun computes only the rest"
        ) from exc
    if gathered:
        raise RuntimeError(f"shards {sorted(gathered)} came back incomplete from Ray; rerun to compute them")
    return result


def _write_shard(fs: Any, output: str, shard: int, rows: Any, id_column: str, result: CorpusResult) -> str:
    import pyarrow.parquet as pq

    rows = rows.select([id_column, "vector", ERROR_COLUMN])
    for row_id, error in zip(rows.column(id_column).to_pylist(), rows.column(ERROR_COLUMN).to_pylist()):
        if error is not None:
            result.errors.append((row_id, error))
    name = f"shard-{shard:05d}.parquet"
    partial = f"{output}/.{name}.partial-{os.getpid()}"
    pq.write_table(rows, partial, filesystem=fs)
    fs.move(partial, f"{output}/{name}")  # a rename on local disks; object stores have no partial objects
    return f"{output}/{name}"
