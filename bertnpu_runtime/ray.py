"""Embedding a corpus with Ray Data (the `ray` extra): a callable class for
`Dataset.map_batches(..., compute=ActorPoolStrategy(...))` that opens one SentenceEncoder per actor.

    import ray
    from bertnpu_runtime.ray import EmbedBatch, npu_actor_options

    ds = ray.data.read_parquet("corpus/")
    ds = ds.map_batches(
        EmbedBatch, fn_constructor_kwargs={"bundle_dir": "bundles/all-MiniLM-L6-v2", "backend": "npu"},
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=4), **npu_actor_options(1),
    )

An NPU actor claims the custom resource `mobilint_npu` (a node declares its cards with
`ray start --resources='{"mobilint_npu": 2}'`) and opens the device Ray's placement leaves it.
A row whose text is not a string gets a null vector and its reason in the `error` column instead
of failing the job.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

import numpy as np

from .backends.npu_device import list_npu_devices
from .encoder import SentenceEncoder
from .errors import BackendUnavailableError
from .options import BackendOptions, with_keywords

NPU_RESOURCE = "mobilint_npu"
ERROR_COLUMN = "error"


# Ray Data restarts a dead actor and retries its batch without limit by default: a card that kills
# its actor on every batch would keep a job running forever. Three of each end it with an error.
ACTOR_RESTARTS = 3


def cpu_actor_options(max_restarts: int = ACTOR_RESTARTS, max_task_retries: int = ACTOR_RESTARTS) -> dict[str, Any]:
    """map_batches keywords for ONNX actors: one CPU each, and restarts of an actor that dies (its
    batch is retried on the new one), at most `max_restarts` per actor."""
    return {"num_cpus": 1, "max_restarts": max_restarts, "max_task_retries": max_task_retries}


def npu_actor_options(
    npu_per_actor: float = 1, max_restarts: int = ACTOR_RESTARTS, max_task_retries: int = ACTOR_RESTARTS
) -> dict[str, Any]:
    """map_batches keywords for NPU actors: the custom resource, and restarts of an actor whose
    NPU call fails (its batch is retried on the new one), at most `max_restarts` per actor."""
    return {**cpu_actor_options(max_restarts, max_task_retries), "resources": {NPU_RESOURCE: npu_per_actor}}


class EmbedBatch:
    """One SentenceEncoder per Ray actor; each call adds a fixed-size list<float32> vector column."""

    def __init__(
        self,
        bundle_dir: str,
        text_column: str = "text",
        vector_column: str = "vector",
        batch_size: int | None = None,
        options: BackendOptions | None = None,
        qbruntime_factory: str | None = None,
        qbruntime_factory_options: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        """options: which backend and how (BackendOptions); `settings` are SentenceEncoder's
        keywords (backend="npu", npu_cores=2, ...) applied on top. An NPU actor takes the first card,
        from its device_no on, that opens (a card another actor holds refuses its cores).
        qbruntime_factory: "module:function", called in the actor with bundle_dir (and
        qbruntime_factory_options as keywords), returning a qbruntime stand-in (a test double
        cannot be sent to an actor ready-made)."""
        options = options or BackendOptions()
        if "backend" in settings:
            options = replace(options, backend=settings.pop("backend"))
        options = with_keywords(options, settings, "EmbedBatch")
        if qbruntime_factory is not None:
            module, _, function = qbruntime_factory.partition(":")
            stand_in = getattr(importlib.import_module(module), function)(
                bundle_dir, **(qbruntime_factory_options or {})
            )
            options = replace(options, npu=replace(options.npu, qbruntime_module=stand_in))
        if options.backend == "npu":
            self.encoder = _on_a_free_card(bundle_dir, options)
        else:
            self.encoder = SentenceEncoder.from_options(bundle_dir, options)
        self.text_column = text_column
        self.vector_column = vector_column
        self.batch_size = batch_size

    def __call__(self, table: Any) -> Any:
        """A pyarrow Table in, the same Table with `vector_column` and `error` columns out."""
        import pyarrow as pa

        if self.text_column not in table.column_names:
            raise KeyError(f"no column {self.text_column!r}; the batch has {table.column_names}")
        values = table.column(self.text_column).to_pylist()
        valid = [i for i, text in enumerate(values) if isinstance(text, str)]
        errors: list[str | None] = [None] * len(values)
        for i, text in enumerate(values):
            if not isinstance(text, str):
                errors[i] = f"{self.text_column} must be a string, found {type(text).__name__}"
        vectors = np.zeros((len(values), self.encoder.dim), np.float32)
        if valid:
            vectors[valid] = self.encoder.encode([values[i] for i in valid], batch_size=self.batch_size)
        flat = pa.array(vectors.ravel(), type=pa.float32())
        mask = pa.array([e is not None for e in errors])
        column = pa.FixedSizeListArray.from_arrays(flat, self.encoder.dim, mask=mask)
        return table.append_column(self.vector_column, column).append_column(
            ERROR_COLUMN, pa.array(errors, pa.string())
        )


def _on_a_free_card(bundle_dir: str, options: BackendOptions) -> SentenceEncoder:
    devices = list_npu_devices(options.npu.qbruntime_module)
    count = len(devices) if isinstance(devices, list) else 0
    refusal: BackendUnavailableError | None = None
    for device_no in range(options.npu.device_no, max(count, options.npu.device_no + 1)):
        try:
            return SentenceEncoder.from_options(
                bundle_dir, replace(options, npu=replace(options.npu, device_no=device_no))
            )
        except BackendUnavailableError as exc:
            refusal = exc
    assert refusal is not None
    raise refusal
