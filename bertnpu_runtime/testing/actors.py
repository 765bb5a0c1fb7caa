"""qbruntime stand-ins built inside a Ray actor (see bertnpu_runtime.ray.EmbedBatch's
qbruntime_factory): a FakeNpu on the bundle's encoder.onnx, and ones whose process dies once or every time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .fake_qbruntime import FakeNpu

DIE_AFTER_CALLS = 3


def fake_npu(bundle_dir: str) -> FakeNpu:
    """A FakeNpu computing with the bundle's encoder.onnx, one card of 8 cores."""
    return FakeNpu(Path(bundle_dir) / "encoder.onnx")


def fake_npu_dying_once(bundle_dir: str, marker: str) -> FakeNpu:
    """As fake_npu, but the process exits on its DIE_AFTER_CALLS-th infer call, once per `marker`
    file (written before dying): a card or driver taking its actor down mid-run."""
    marker_file = Path(marker)

    def first_time() -> bool:
        if marker_file.exists():
            return False
        marker_file.write_text("died once\n")
        return True

    return _dying(fake_npu(bundle_dir), first_time)


def fake_npu_dying_always(bundle_dir: str) -> FakeNpu:
    """As fake_npu, but every process exits on its DIE_AFTER_CALLS-th infer call: a card that takes
    down each actor opened on it."""
    return _dying(fake_npu(bundle_dir), lambda: True)


def _dying(fake: FakeNpu, should_die: Callable[[], bool]) -> FakeNpu:
    inject = fake._inject_fault

    def inject_or_die(core: tuple[int, int]) -> None:
        if len(fake.calls) + 1 >= DIE_AFTER_CALLS and should_die():
            os._exit(1)
        inject(core)

    fake._inject_fault = inject_or_die  # type: ignore[method-assign]  # the fault hook, replaced in this actor's double
    return fake


def fake_npu_recording_resources(bundle_dir: str, folder: str) -> FakeNpu:
    """As fake_npu, after writing the Ray resources assigned to this actor to
    `folder`/resources-<pid>.json."""
    import json

    import ray

    assigned = ray.get_runtime_context().get_assigned_resources()
    (Path(folder) / f"resources-{os.getpid()}.json").write_text(json.dumps(assigned))
    return fake_npu(bundle_dir)
