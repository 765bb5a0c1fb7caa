"""`bertnpu serve`: the app on uvicorn, one ready line in the log, and a graceful stop.

SIGTERM or SIGINT stops accepting connections and gives the requests in flight STOP_DRAIN_S (10 s)
to finish (the batcher runs what is queued); what is left then is answered 503, the encoder is
closed (the NPU models are released, a hung core's call abandoned after its 5 s close bound) and
the process exits 0: a stop takes at most about 15 s. A second SIGINT forces the exit.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from ..backends.npu import NpuEncoder
from .app import STOP_DRAIN_S, Model, ModelService, ServeSettings, create_app

logger = logging.getLogger("bertnpu.serve")

# uvicorn's own wait for open connections: past the drain, with room for the encoder's close.
GRACEFUL_SHUTDOWN_S = int(STOP_DRAIN_S + NpuEncoder.CLOSE_TIMEOUT_S) + 2
# The garbage collector's thresholds while serving (Python's: 700, 10, 10). A young collection
# scans the objects of the requests in flight, however many allocations came before it: at 700,
# 64 one-sentence clients paid about 22 us of collection a request.
GC_THRESHOLDS = (10_000, 10, 10)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # As uvicorn's own, without re-raising the signal after the graceful stop: `bertnpu serve`
        # stopped on request exits 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
            self._on_stop()


def serve(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    open_encoder: Callable[[], Model] | None = None,
) -> int:
    """Run the server until stopped; the exit code: 0 after a requested stop, 2 when the encoder
    could not be opened. `open_encoder` replaces opening settings.bundle (a test double's encoder).
    While it runs, the garbage collector runs less often (GC_THRESHOLDS) and, once the model is
    open, skips what was loaded by then (gc.freeze); both are undone when it returns."""
    failed: list[str] = []
    server: _Server

    def on_ready(service: ModelService) -> None:
        while not server.started and not server.should_exit:  # the socket is bound once started
            time.sleep(0.01)
        encoder = service.opened()
        if not server.should_exit:  # else serve() may have returned, and undone the collector's settings
            gc.freeze()  # what is loaded by now lives as long as the server: older collections skip it
        logger.info(
            "bertnpu serve: ready on http://%s:%d (model %s, backend %s: %s)",
            host,
            port,
            service.model_name,
            encoder.backend,
            encoder.backend_reason,
        )

    def on_failure(failure: str) -> None:
        failed.append(failure)
        logger.error("bertnpu serve: cannot open the encoder: %s", failure)
        server.should_exit = True

    app = create_app(settings, open_encoder=open_encoder, on_ready=on_ready, on_failure=on_failure)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    server = _Server(config, on_stop=app.state.service.begin_stop)
    threading.current_thread().name = "bertnpu-serve"
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        server.run()
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return 2 if failed else 0
