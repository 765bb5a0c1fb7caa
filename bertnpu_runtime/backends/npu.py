"""Mobilint NPU encoder backend: runs the bundle's model.mxq through `qbruntime`.

One `qbruntime.Model` is launched per selected NPU core (explicit single-core mode), each driven by
a worker thread of its own that takes calls from one shared queue, so the sentences of a batch, and
the calls of several batches, run on all cores at once (`infer` blocks). `submit` only queues the
calls and returns, so the host embeds and pools other batches meanwhile.

How a padded batch becomes NPU calls depends on the .mxq (bundle.json's npu.mask_input):
- no mask input (Mobilint's BERT recipe): the NPU cannot mask padding, so every sentence runs at
  its true length, unpadded: float32 (1, len, hidden). Sentences of the same length are sent
  together as one 4-D (n, 1, len, hidden) call.
- a mask input ("keep" / "additive"): each sentence is zero-padded to the smallest width a model
  variant accepts, a second float32 input (1, width, 1) carries the mask (see bundle.NpuSpec), and
  the padded rows are sliced off after. Sentences padded to the same width share one call.
`hints.bucket` tells the pipeline that width, so it can form batches that need a single call.
Finding the card, choosing its cores and reading the .mxq's widths are in npu_device.py.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..bundle import NPU_ADDITIVE_MASK_PAD, NpuSpec
from ..errors import (
    BackendUnavailableError,
    BundleError,
    EncoderClosedError,
    NpuCallError,
    NpuTimeoutError,
    first_line,
)
from ..options import NpuOptions
from .base import BackendHints
from .npu_device import (
    available_devices,
    device_core_count,
    other_board,
    read_layout,
    select_slots,
    slot_name,
)

logger = logging.getLogger("bertnpu")


class NpuEncoder:
    """The encoder on a Mobilint NPU (ARIES or REGULUS), one model instance per core or cluster. Thread-safe.

    mxq_path: the bundle's model.mxq. npu_spec: bundle.json's "npu" section (mask input or not).
    hidden_size: the model's hidden size, checked against the .mxq's input shape.
    options: an NpuOptions, whose settings mean:
    device_no: which card (/dev/aries<N>). device_name: open it by board name ("aries", "regulus",
        ...), as Mobilint's packages do, so a host with two kinds of card is not ambiguous.
    core_mode: "single" (default: one model per local core, each running sentences on its own),
        "multi" or "global4" (one model per cluster, its four cores working together), "global8"
        (one model over both clusters: the lowest latency for one sentence). The .mxq must have
        been compiled for the mode (`--inference-scheme`).
    cores: single-core mode only. None = every local core of the card (8 on ARIES, 1 on REGULUS,
        read from the device name); an int n = the first n cores in cluster-major order (0,0),
        (0,1), .. (0,3), (1,0), ..; or explicit (cluster, core) pairs.
    group_sentences: send sentences of equal (padded) length together as one 4-D call. None
        (default) does so in multi mode only, where Mobilint's own packages do; elsewhere one
        sentence goes per call, the way Mobilint runs BERT and verifies its runtime. If the runtime
        refuses a 4-D call, its sentences are sent one at a time instead, and so is everything
        after (logged once as a warning).
    trace_path: write qbruntime's event trace (a Chrome trace; open it in Perfetto) of this
        encoder's lifetime to this file: qbruntime.start_tracing_events at open, stop at close().
        Tracing is process-wide in qbruntime: one encoder at a time.
    timeout_s: the longest wait for an NPU call's result; past it, the waiting encode() raises
        NpuTimeoutError naming the busy core. Also qbruntime's own QBRUNTIME_NPU_TIMEOUT_MS where
        the environment does not set it. close() waits at most CLOSE_TIMEOUT_S for the workers.
    qbruntime_module: the qbruntime module to use; a bertnpu_runtime.testing.FakeNpu in tests.
    """

    CLOSE_TIMEOUT_S = 5.0
    # A core whose calls fail this many times in a row is taken out of service; the others go on.
    FAILURES_BEFORE_OUT_OF_SERVICE = 3
    # How often an out-of-service core gets a probe call; it rejoins when one succeeds.
    PROBE_INTERVAL_S = 30.0

    name = "npu"
    # The pipeline keeps this much queued: about 25 MB of hidden states, and on STS-B-like text
    # (16 tokens a sentence) ~1,000 sentences, which outlasts tokenizing the next chunk of texts.
    QUEUED_TOKENS = 16_384
    # encode()'s batch_size when none is given. A call holds sentences of one length, unpadded, so a
    # larger batch wastes no NPU time, and every call costs the host a thread wake-up and the GIL.
    PREFERRED_BATCH_SIZE = 64

    def __init__(
        self,
        mxq_path: str | Path,
        npu_spec: NpuSpec,
        hidden_size: int,
        options: NpuOptions | None = None,
    ) -> None:
        options = options or NpuOptions()
        device_no, device_name, core_mode = options.device_no, options.device_name, options.core_mode
        self.timeout_s = float(options.timeout_s)
        os.environ.setdefault("QBRUNTIME_NPU_TIMEOUT_MS", str(math.ceil(self.timeout_s * 1000)))
        qbruntime_module = options.qbruntime_module
        if qbruntime_module is None:
            try:
                qbruntime_module = importlib.import_module("qbruntime")
            except ImportError as exc:
                raise BackendUnavailableError(
                    "the npu backend needs Mobilint's runtime: pip install 'bertnpu[npu]'"
                ) from exc
        qb = qbruntime_module
        self._qb = qb
        self.mxq_path = Path(mxq_path)
        self.npu_spec = npu_spec
        self.hidden_size = hidden_size
        self.device_no = device_no
        self.core_mode = core_mode
        _check_scheme(self.mxq_path, npu_spec, core_mode)
        group_sentences = options.group_sentences
        self._group = core_mode == "multi" if group_sentences is None else bool(group_sentences)
        self._models: list[Any] = []
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()  # None stops a worker
        self._stopping = threading.Event()  # set by close(): out-of-service workers stop probing
        self.calls_failed = self.calls_retried = self.timeouts = 0
        self._widths: dict[int, int] = {}  # sentence length -> width it runs at
        self._outstanding = 0  # calls queued or running
        self._lock = threading.Lock()  # guards _outstanding, and _closed against queueing
        self._workers: list[threading.Thread] = []
        self._running: dict[tuple[int, int], tuple[float, _Call]] = {}  # core -> (when it started, its call)
        self._in_service: list[tuple[int, int]] = []
        self._out_of_service: dict[tuple[int, int], str] = {}  # core -> its last failure
        self._closed = False
        self._tracing = False

        # The board the .mxq was compiled for, by name (as Mobilint's packages open it), unless the
        # caller names one; bundles from before compile recorded it open whatever card is there.
        device_name = device_name or npu_spec.target_device
        by_name = {} if device_name is None else {"device_name": device_name}
        try:
            self._accelerator = qb.Accelerator(**by_name, dev_no=device_no)
        except qb.QbRuntimeError as exc:
            other = other_board(npu_spec.target_device, available_devices(qb))
            if options.device_name is None and other is not None:
                raise BackendUnavailableError(
                    f"{self.mxq_path} was compiled for {npu_spec.target_device} (bundle.json npu.target_device), but "
                    f"the NPU here is {other}: rebuild it with `python -m compile --mxq --target-device {other}`"
                ) from exc
            raise BackendUnavailableError(
                f"cannot open NPU device {device_no} ({'device_name=' + repr(device_name) + ', ' if device_name else ''}"
                f"dev_no={device_no}; qbruntime sees {available_devices(qb)}): {first_line(exc)}"
            ) from exc
        try:
            if options.trace_path is not None:
                self._start_tracing(Path(options.trace_path))
            self.cores = select_slots(core_mode, options.cores, device_core_count(self._accelerator))
            for slot in self.cores:
                self._models.append(self._launch(slot))
                if len(self._models) == 1:
                    layout = read_layout(self._models[0], self.mxq_path, npu_spec, hidden_size)
                    self._variants, self._output_index = layout.variants, layout.output_index
                    self.npu_spec = replace(npu_spec, mask_input=layout.mask_input)
        except BaseException:
            self.close()
            raise
        # Two calls at once: the host stages of one run while the cores work through the other's calls.
        self.hints = BackendHints(
            self.QUEUED_TOKENS, self.PREFERRED_BATCH_SIZE, bucket=self._width_for, concurrent_calls=2
        )
        self._in_service = list(self.cores)
        for model, slot in zip(self._models, self.cores):
            worker = threading.Thread(
                target=self._serve, args=(model, slot), name=f"bertnpu-npu-{slot[0]}-{slot[1]}", daemon=True
            )
            worker.start()
            self._workers.append(worker)
        logger.info(
            "npu backend: %s on device %d, %s-core mode on %s, variants %s, mask input %s, %s",
            self.mxq_path.name,
            device_no,
            core_mode,
            [slot_name(s) for s in self.cores],
            [str(v) for v in self._variants],
            self.npu_spec.mask_input,
            "several sentences per call" if self._group else "one sentence per call",
        )

    def _start_tracing(self, path: Path) -> None:
        if not path.parent.is_dir():
            raise ValueError(f"npu trace file {path}: its folder does not exist")
        if not self._qb.start_tracing_events(str(path)):
            raise BackendUnavailableError(f"qbruntime refused to start tracing to {path} (is another trace running?)")
        self._tracing = True

    def _launch(self, slot: tuple[int, int]) -> Any:
        """Load the .mxq for one slot (a core, a cluster or both, by core mode) and launch it."""
        qb = self._qb
        config = qb.ModelConfig()
        cluster, core = slot
        if self.core_mode == "single":
            accepted = config.set_single_core_mode(
                None, [qb.CoreId(qb.Cluster[f"Cluster{cluster}"], qb.Core[f"Core{core}"])]
            )
        elif self.core_mode == "multi":
            accepted = config.set_multi_core_mode([qb.Cluster[f"Cluster{cluster}"]])
        elif self.core_mode == "global4":
            accepted = config.set_global4_core_mode([qb.Cluster[f"Cluster{cluster}"]])
        else:
            accepted = config.set_global8_core_mode()
        if not accepted:
            raise ValueError(f"qbruntime rejected {slot_name(slot)} for {self.core_mode}-core mode")
        try:
            model = qb.Model(str(self.mxq_path), config)
        except qb.QbRuntimeError as exc:
            if "MXQAndModelConfigNotMatch" in str(exc):
                raise BackendUnavailableError(
                    f"{self.mxq_path}: not compiled for {self.core_mode}-core mode ({first_line(exc)}); compile it "
                    f"with `python -m compile --mxq --inference-scheme {self.core_mode}` (or all), or use core mode 'single'"
                ) from exc
            raise BackendUnavailableError(
                f"{self.mxq_path}: qbruntime cannot load it ({first_line(exc)}); "
                "rebuild it with `python -m compile --mxq`"
            ) from exc
        try:
            model.launch(self._accelerator)
        except qb.QbRuntimeError as exc:
            raise BackendUnavailableError(
                f"cannot launch {self.mxq_path.name} on NPU device {self.device_no}, {slot_name(slot)}: "
                f"{first_line(exc)} (is another process, or an encoder in this one that is still open, using "
                "that core? close() it, or choose other cores: npu_cores= to SentenceEncoder, cores= to NpuEncoder)"
            ) from exc
        return model

    def run(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """hidden float32 [batch, seq, hidden], attention_mask int64 [batch, seq] (right-padded)
        -> float32 [batch, seq, hidden]; padding rows of the output are zeros."""
        return self.submit(hidden, attention_mask).result()

    def submit(
        self, hidden: np.ndarray, attention_mask: np.ndarray, alone: bool = False, call_tokens: int | None = None
    ) -> PendingBatch:
        """Queue a batch's calls on the cores and return at once; `.result()` waits for the output.
        (`alone` changes nothing here: a lone batch's calls already spread over the idle cores.
        Nor does `call_tokens`: calls run in the order they come.)

        The inputs are built here, so a core's worker thread does nothing but infer: between two
        calls it needs the GIL only briefly, and the NPU stays busy. Unpadded rows go to the NPU as
        views of `hidden`, not copies: leave it unchanged until the result is ready.
        """
        if self._closed:
            raise EncoderClosedError("the encoder is closed: NpuEncoder.submit() called after close()")
        lengths = _check_batch(hidden, attention_mask, self.hidden_size)  # [batch]
        calls = self._plan(lengths)
        inputs = [self._call_inputs(hidden, lengths, rows, width) for rows, width in calls]
        seq = hidden.shape[1]
        whole = len(calls) == 1 and len(calls[0][0]) == len(lengths) and calls[0][1] == seq and lengths.min() == seq
        batch = PendingBatch(
            hidden.shape, calls, whole, self._call_output, self.timeout_s, self._stuck_cores, self._count_timeout
        )
        with self._lock:  # so that close() cannot slip in between: no call is queued behind the workers' stop
            if self._closed:
                raise EncoderClosedError("the encoder is closed: NpuEncoder.submit() called after close()")
            if not self._in_service:
                raise self._no_core_left()
            self._outstanding += len(calls)
            for index, call_inputs in enumerate(inputs):
                self._calls.put(_Call(call_inputs, batch, index))
        return batch

    def health(self) -> str | None:
        """None while some core in service can take calls; else why not, in one line: the encoder
        is closed, no core is in service, or every core in service has been inside one call for
        longer than timeout_s (hung)."""
        if self._closed:
            return "the encoder is closed"
        in_service = list(self._in_service)
        if not in_service:
            failed = ", ".join(f"{slot_name(slot)}: {why}" for slot, why in sorted(self._out_of_service.items()))
            return f"no NPU core is in service ({failed}); out-of-service cores are probed every {self.PROBE_INTERVAL_S:g} s"
        now = time.monotonic()
        stuck = [core for core in in_service if now - self._running.get(core, (now, None))[0] > self.timeout_s]
        if len(stuck) == len(in_service):
            return (
                f"every NPU core in service has been inside one call for more than npu_timeout_s="
                f"{self.timeout_s:g} s ({self._stuck_cores()})"
            )
        return None

    def stats(self) -> dict[str, float]:
        return {
            "npu_cores_in_service": len(self._in_service),
            "npu_call_failures": self.calls_failed,
            "npu_call_retries": self.calls_retried,
            "npu_timeouts": self.timeouts,
        }

    @property
    def cores_in_service(self) -> list[tuple[int, int]]:
        """The (cluster, core) pairs still taking calls; a core whose calls failed
        FAILURES_BEFORE_OUT_OF_SERVICE times in a row is no longer among them."""
        return list(self._in_service)

    @property
    def worker_thread_ids(self) -> list[int]:
        """The thread ident of each core's worker (to read its CPU clock, for example)."""
        return [worker.ident for worker in self._workers if worker.ident is not None]

    def _plan(self, lengths: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Group the sentences into NPU calls: (row indices, width), longest first.

        When the NPU is idle, groups are split so that every core gets work (at most
        ceil(sentences / cores) per call): the batch finishes soonest. When calls are already
        queued or running, the cores have work, and each group goes as one call, which costs the
        host less per sentence.
        """
        rows_by_width = self._rows_by_width(lengths)
        real = sum(len(rows) for rows in rows_by_width.values())
        if not self._group:
            per_call = 1
        elif self._outstanding == 0:
            per_call = max(1, math.ceil(real / max(1, len(self._in_service))))
        else:
            per_call = real
        return [
            (rows[start : start + per_call], width)
            for width, rows in sorted(rows_by_width.items(), reverse=True)
            for start in range(0, len(rows), per_call)
        ]

    def _rows_by_width(self, lengths: np.ndarray) -> dict[int, np.ndarray]:
        """Row indices of the sentences (length > 0) per width they run at, in row order."""
        if not len(lengths):
            return {}
        shortest, longest = int(lengths.min()), int(lengths.max())
        if shortest == longest:  # one length, as in every batch encode() forms
            return {self._width_for(longest): np.arange(len(lengths))} if longest > 0 else {}
        rows = np.flatnonzero(lengths > 0)
        distinct, which = np.unique(lengths[rows], return_inverse=True)
        widths = np.array([self._width_for(length) for length in distinct.tolist()])[which]
        return {width: rows[widths == width] for width in set(widths.tolist())}

    def _width_for(self, length: int) -> int:
        """The width a sentence of `length` tokens is sent with (remembered: this runs per batch)."""
        width = self._widths.get(length)
        if width is None:
            width = self._widths[length] = self._smallest_width(length)
        return width

    def _smallest_width(self, length: int) -> int:
        pad = self.npu_spec.mask_input is not None
        fits = [fit for v in self._variants if (fit := v.smallest_fit(length)) is not None and (pad or fit == length)]
        if not fits:
            accepted = "; ".join(str(v) for v in self._variants)
            why = "" if pad else " (this .mxq has no mask input, so sentences cannot be padded)"
            raise ValueError(
                f"no variant of {self.mxq_path.name} accepts a sentence of {length} tokens; "
                f"its variants accept: {accepted}{why}"
            )
        return min(fits)

    def _call_inputs(self, hidden: np.ndarray, lengths: np.ndarray, rows: np.ndarray, width: int) -> list[np.ndarray]:
        """The infer inputs for `rows`, padded to `width`: [n, 1, width, hidden] (+ mask), or 3-D for one sentence."""
        n, seq = len(rows), hidden.shape[1]
        keep = np.arange(width)[None, :] < lengths[rows][:, None]  # [n, width]
        unpadded = bool(keep.all())
        if width == seq and unpadded and rows[-1] - rows[0] == n - 1:
            x = hidden[rows[0] : rows[-1] + 1]  # consecutive unpadded rows: a C-contiguous view, no copy
        elif width <= seq:
            x = hidden[rows, :width]  # fancy indexing copies: a fresh C-contiguous [n, width, hidden]
        else:
            x = np.zeros((n, width, self.hidden_size), np.float32)
            x[:, :seq] = hidden[rows]
        if not unpadded:
            x[~keep] = 0.0  # padding goes in as zeros, as in Mobilint's own padded encoders
        inputs = [x.reshape(n, 1, width, self.hidden_size)]  # [n, H=1, W, C]
        if self.npu_spec.mask_input == "keep":
            inputs.append(keep.astype(np.float32).reshape(n, 1, width, 1))
        elif self.npu_spec.mask_input == "additive":
            bias = np.where(keep, np.float32(0.0), np.float32(NPU_ADDITIVE_MASK_PAD))
            inputs.append(bias.reshape(n, 1, width, 1))
        if n == 1:
            inputs = [a[0] for a in inputs]  # 3-D (H, W, C), the form Mobilint's tutorial uses
        return inputs

    def _serve(self, model: Any, core: tuple[int, int]) -> None:
        """A core's worker: run queued calls on `model` until told to stop. After
        FAILURES_BEFORE_OUT_OF_SERVICE failed calls in a row the core leaves service; it is probed
        every PROBE_INTERVAL_S and rejoins when a probe call succeeds."""
        while True:
            failure = self._serve_until_out_of_service(model, core)
            if failure is None:
                return  # told to stop
            self._take_out_of_service(core, failure)
            if not self._probe_until_recovered(model, core):
                return

    def _serve_until_out_of_service(self, model: Any, core: tuple[int, int]) -> BaseException | None:
        """Run calls; the last failure once the core has failed too many in a row, None on stop."""
        failures = 0  # in a row
        last_failure: BaseException | None = None
        while (call := self._calls.get()) is not None:
            if call.avoid == core and len(self._in_service) > 1:  # a retry goes to another core
                self._calls.put(call)
                time.sleep(0.001)  # let a worker of another core take it
                continue
            call.batch.started = True  # before reading `cancelled`: see PendingBatch.cancel
            if call.batch.cancelled:
                output: np.ndarray | BaseException | None = CancelledError()
            else:
                self._running[core] = (time.monotonic(), call)
                try:
                    output = self._infer(model, call.inputs)
                    failures = 0
                except self._qb.QbRuntimeError as exc:
                    self.calls_failed += 1
                    failures += 1
                    output = last_failure = NpuCallError(f"NPU call failed on {slot_name(core)}: {first_line(exc)}")
                    output.__cause__ = exc
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for this batch
                    output = last_failure = exc
                    failures += 1
                del self._running[core]
                if isinstance(output, NpuCallError) and call.avoid is None and self._retry_elsewhere(call, core):
                    output = None  # queued again; another core reports it
            if output is not None:
                with self._lock:
                    self._outstanding -= 1
                call.batch.report(call.position, output)
            if failures >= self.FAILURES_BEFORE_OUT_OF_SERVICE and last_failure is not None:
                return last_failure
        return None

    def _retry_elsewhere(self, call: _Call, core: tuple[int, int]) -> bool:
        """Queue a failed call again for another core in service, once; False when there is none."""
        with self._lock:
            if self._closed or not any(other != core for other in self._in_service):
                return False
            self.calls_retried += 1
            self._calls.put(call._replace(avoid=core))
        return True

    def _probe_until_recovered(self, model: Any, core: tuple[int, int]) -> bool:
        """Every PROBE_INTERVAL_S, one small call on the out-of-service core; when it succeeds the
        core rejoins service (True). False once the encoder is closing."""
        while not self._stopping.wait(self.PROBE_INTERVAL_S):
            try:
                self._infer(model, self._probe_inputs())
            except BaseException as exc:  # noqa: BLE001 - the core stays out; the next probe tries again
                self._out_of_service[core] = first_line(exc)
                continue
            with self._lock:
                if self._closed:
                    return False
                self._out_of_service.pop(core, None)
                self._in_service.append(core)
            logger.warning("npu backend: core %s answered a probe call and is back in service", slot_name(core))
            return True
        return False

    def _probe_inputs(self) -> list[np.ndarray]:
        """One sentence of zeros at the shortest width the .mxq takes."""
        width = min(self._width_for(length) for length in (1, 2, 4, 8, 16, 32, 64) if self._fits(length))
        hidden = np.zeros((1, width, self.hidden_size), np.float32)
        return self._call_inputs(hidden, np.array([width]), np.array([0]), width)

    def _fits(self, length: int) -> bool:
        try:
            self._width_for(length)
        except ValueError:
            return False
        return True

    def _take_out_of_service(self, core: tuple[int, int], failure: BaseException) -> None:
        """Stop giving `core` calls (its worker probes it from now on). When it was the last core,
        the calls still queued fail, and so does every submit() until a core recovers."""
        with self._lock:
            self._in_service.remove(core)
            self._out_of_service[core] = first_line(failure)
            left = list(self._in_service)
            orphans = [] if left else self._take_queued()  # no worker will take these: fail them now
        logger.warning(
            "npu backend: core %s failed %d calls in a row (last: %s) and is out of service (probed every %g s); "
            "cores still in service: %s",
            slot_name(core),
            self.FAILURES_BEFORE_OUT_OF_SERVICE,
            first_line(failure),
            self.PROBE_INTERVAL_S,
            ", ".join(slot_name(s) for s in left) or "none",
        )
        _fail(orphans, self._no_core_left())

    def _take_queued(self) -> list[_Call]:
        """Every call still queued, taken off the queue (holding self._lock); workers' stops are dropped."""
        taken = []
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                taken.append(call)
        self._outstanding -= len(taken)
        return taken

    def _no_core_left(self) -> BackendUnavailableError:
        failed = "; ".join(f"{slot_name(slot)}: {why}" for slot, why in sorted(self._out_of_service.items()))
        return BackendUnavailableError(
            f"no NPU core is left in service: each failed {self.FAILURES_BEFORE_OUT_OF_SERVICE} calls in a row "
            f"({failed}). close() this encoder and open a new one (after a device reset, or on other cores)"
        )

    def _count_timeout(self) -> None:
        self.timeouts += 1

    def _stuck_cores(self) -> str:
        """The cores inside a call, and for how long, for a timeout's message."""
        now = time.monotonic()
        running = sorted((slot, started) for slot, (started, _) in self._running.items())
        busy = [f"{slot_name(slot)} for {now - started:.1f} s" for slot, started in running]
        return "busy: " + ", ".join(busy) if busy else "no core is inside a call (the calls are queued)"

    def _infer(self, model: Any, inputs: list[np.ndarray]) -> np.ndarray:
        """One call's output. A 4-D call that qbruntime refuses is run again one sentence at a time;
        if that works, grouping stops for good. Whether every .mxq and driver accept 4-D calls of
        several sentences is not known without a card (the wheel has batch-size checks)."""
        try:
            return model.infer(inputs)[self._output_index]
        except (ValueError, self._qb.QbRuntimeError) as refused:
            sentences = len(inputs[0]) if inputs[0].ndim == 4 else 1
            if sentences == 1 or not _is_shape_refusal(refused):
                raise  # any other failure fails this call only; the calling mode stays
            outputs = [model.infer([x[i] for x in inputs])[self._output_index] for i in range(sentences)]  # 3-D each
            self._stop_grouping(sentences, refused)
            return np.stack(outputs)

    def _stop_grouping(self, sentences: int, refused: BaseException) -> None:
        with self._lock:
            if not self._group:
                return
            self._group = False
        logger.warning(
            "npu backend: qbruntime refused one call of %d sentences (%s) and took them one at a time; "
            "sending one sentence per call from now on",
            sentences,
            first_line(refused),
        )

    def _call_output(self, result: np.ndarray, n: int, width: int) -> np.ndarray:
        """An infer result as [n, width, hidden], checked to hold that many values."""
        out = np.asarray(result, dtype=np.float32)
        if out.size != n * width * self.hidden_size:
            raise BundleError(
                self.mxq_path,
                f"infer returned shape {out.shape} for {n} sentence(s) of width {width}; expected "
                f"{n * width * self.hidden_size} values ({n} x {width} x {self.hidden_size})",
            )
        return out.reshape(n, width, self.hidden_size)

    def close(self) -> None:
        """Fail the calls still queued with EncoderClosedError, let each core finish the call it is
        in (at most CLOSE_TIMEOUT_S), dispose every launched model and stop the worker threads.
        Safe to call twice, and from another thread than the one encoding: the cores are free for
        a new encoder when it returns (but for one still inside a call past the time limit)."""
        self._stopping.set()
        with self._lock:
            self._closed = True
            queued = self._take_queued()
            for _ in self._workers:
                self._calls.put(None)
        _fail(queued, EncoderClosedError("the encoder was closed before this NPU call ran"))
        deadline = time.monotonic() + self.CLOSE_TIMEOUT_S
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stuck = {core for core, worker in zip(getattr(self, "cores", []), self._workers) if worker.is_alive()}
        self._workers = []
        for core in stuck:  # whoever waits for a call the core never finishes hears it now, not at the timeout
            running = self._running.get(core)
            if running is not None:
                _fail(
                    [running[1]], EncoderClosedError(f"the encoder was closed while {slot_name(core)} did not answer")
                )
        models, self._models = self._models, []
        for model, core in zip(models, getattr(self, "cores", [])):
            if core in stuck:  # its worker is still inside infer: disposing under it could hang too
                logger.warning(
                    "npu backend: core %s is still inside a call after %.0f s; its model "
                    "is left undisposed (its worker thread is a daemon and ends with the process)",
                    slot_name(core),
                    self.CLOSE_TIMEOUT_S,
                )
                continue
            try:
                model.dispose()
            except self._qb.QbRuntimeError as exc:
                logger.warning("npu backend: dispose failed: %s", first_line(exc))
        if self._tracing:
            self._tracing = False
            self._qb.stop_tracing_events()
        self._accelerator = None

    def __enter__(self) -> NpuEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Call(NamedTuple):
    """One infer call queued for the cores."""

    inputs: list[np.ndarray]
    batch: PendingBatch
    position: int  # the call's place in its batch
    avoid: tuple[int, int] | None = None  # a retry: the core whose call failed


class PendingBatch:
    """A batch whose calls are queued on the NPU cores; `result()` waits for them and assembles the output."""

    def __init__(
        self,
        shape: tuple[int, ...],
        calls: list[tuple[np.ndarray, int]],
        whole: bool,
        call_output: Callable[[np.ndarray, int, int], np.ndarray],
        timeout_s: float = math.inf,
        stuck_cores: Callable[[], str] = lambda: "",
        on_timeout: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_timeout = on_timeout
        self._timeout_s = timeout_s
        self._stuck_cores = stuck_cores
        self._shape = shape
        self._call_output = call_output  # (infer result, sentences, width) -> checked [n, width, hidden]
        self._calls = calls
        self._results: queue.SimpleQueue = queue.SimpleQueue()  # (call index, output or error) per call
        self.cancelled = False
        self.started = False  # a worker has taken one of its calls
        self._whole = whole  # one call of every row, unpadded: its output is the batch's, no copy
        self._collected = False
        self._output: np.ndarray | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        """Whether every call has finished, so that result() will not wait."""
        return self._collected or self._results.qsize() == len(self._calls)

    def report(self, index: int, output: np.ndarray | BaseException) -> None:
        """A worker's answer for call `index`: its output, or what it raised."""
        self._results.put((index, output))

    def cancel(self) -> bool:
        """Withdraw the calls no core has taken yet (they report CancelledError); True when none
        had been taken. A worker sets `started` before it reads `cancelled`, so a False `started`
        read after `cancelled` is set means no call will run."""
        self.cancelled = True
        return not self.started

    def result(self) -> np.ndarray:
        """float32 [batch, seq, hidden], as NpuEncoder.run returns it. Raises what a call raised."""
        if not self._collected:
            self._output, self._error = self._collect()
            self._collected = True
        if self._error is not None:
            raise self._error
        assert self._output is not None  # _collect gives an output or an error
        return self._output

    def _collect(self) -> tuple[np.ndarray | None, BaseException | None]:
        seq = self._shape[1]
        output = None if self._whole else np.zeros(self._shape, np.float32)
        error: BaseException | None = None
        for _ in self._calls:  # every call reports, even after one failed, so none is left behind
            try:
                index, result = self._results.get(timeout=self._timeout_s)
            except queue.Empty:
                self._on_timeout()
                return None, NpuTimeoutError(
                    f"an NPU call gave no result within npu_timeout_s={self._timeout_s:g} s; {self._stuck_cores()}. "
                    "The core may be hung: close() this encoder and open a new one (other cores, or after a reset)"
                )
            if isinstance(result, BaseException):
                error = error or result
                continue
            rows, width = self._calls[index]
            out = self._call_output(result, len(rows), width)
            if output is None:
                output = out
            else:
                output[rows, : min(width, seq)] = out[:, :seq]
        return output, error


def _fail(calls: list[_Call], error: BaseException) -> None:
    """Report `error` for each of these calls taken off the queue."""
    for call in calls:
        call.batch.report(call.position, error)


def _check_scheme(mxq_path: Path, npu_spec: NpuSpec, core_mode: str) -> None:
    """An .mxq that bundle.json says was compiled for other core modes is refused before launch."""
    scheme = npu_spec.inference_scheme
    if scheme is not None and scheme not in ("all", core_mode):
        raise BackendUnavailableError(
            f"{mxq_path} was compiled with inference_scheme {scheme!r} (bundle.json); {core_mode}-core mode needs "
            f"`python -m compile --mxq --inference-scheme {core_mode}` (or all), or use core mode {scheme!r}"
        )


def _is_shape_refusal(exc: BaseException) -> bool:
    """Whether qbruntime refused a call for its shape or batch size (its Python layer's "Input shape
    is invalid", a shape or batch-size code), as opposed to a failure of the call itself."""
    text = first_line(exc).lower()
    return "shape" in text or "batch" in text


def _check_batch(hidden: np.ndarray, attention_mask: np.ndarray, hidden_size: int) -> np.ndarray:
    """Validate one padded batch; returns the true length of every sentence, [batch]."""
    if hidden.ndim != 3 or hidden.shape[2] != hidden_size or hidden.dtype != np.float32:
        raise ValueError(f"hidden must be float32 [batch, seq, {hidden_size}], found {hidden.dtype} {hidden.shape}")
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask must be [batch, seq] = {hidden.shape[:2]}, found {attention_mask.shape}")
    if attention_mask.all():  # no padding: every NPU batch encode() forms
        return np.full(len(attention_mask), attention_mask.shape[1])
    lengths = attention_mask.sum(axis=1)
    if not np.array_equal(attention_mask != 0, np.arange(hidden.shape[1])[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must be right-padded (1s then 0s in every row): the NPU runs each prefix")
    return lengths
