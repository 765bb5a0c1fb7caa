"""`bertnpu serve`: the app on uvicorn, one ready line in the log, and a graceful stop.

SIGTERM or SIGINT stops accepting connections, lets the requests in flight finish (the batcher runs
what is queued), closes the encoder (the NPU models are released) and exits 0. A second SIGINT
forces the exit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import uvicorn

from .app import ModelService, ServeSettings, create_app

logger = logging.getLogger("bertnpu.serve")

GRACEFUL_SHUTDOWN_S = 30


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # As uvicorn's own, without re-raising the signal after the graceful stop: `bertnpu serve`
        # stopped on request exits 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the server until stopped; the exit code: 0 after a requested stop, 2 when the encoder
    could not be opened."""
    failed: list[str] = []
    server: _Server

    def on_ready(service: ModelService) -> None:
        while not server.started and not server.should_exit:  # the socket is bound once started
            time.sleep(0.01)
        encoder = service.opened()
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

    app = create_app(settings, on_ready=on_ready, on_failure=on_failure)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    server = _Server(config)
    threading.current_thread().name = "bertnpu-serve"
    server.run()
    return 2 if failed else 0
