"""The HTTP application: OpenAI's /v1/embeddings and TEI's /embed for an embedding bundle, TEI's
/rerank and the Cohere/Jina-style /v1/rerank for a reranker bundle, /v1/models, /health and
/metrics, over one model whose batches the Batcher fills from every client's requests.

Bodies are parsed with orjson and checked by requests.py rather than by pydantic models: the
messages name the offending field and index, and parsing costs less per request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..cross_encoder import CrossEncoder
from ..encoder import SentenceEncoder
from ..errors import (
    BackendCallError,
    BackendUnavailableError,
    EncoderClosedError,
    NpuTimeoutError,
    first_line,
)
from ..heads import activate
from ..opening import open_model
from ..options import BackendOptions
from ..pipeline import HostBatch, TextPairs
from ..pooling import truncate_and_normalize
from ..tokenize import TokenRows
from .batcher import Batcher, QueueFull
from .disconnects import ClientLeft, DisconnectWatch
from .metrics import Metrics
from .progress import ProgressLine
from .requests import (
    RequestError,
    RerankRequest,
    non_blank,
    parse_decode_request,
    parse_embed_request,
    parse_embeddings_request,
    parse_json_object,
    parse_rerank_request,
    parse_similarity_request,
    parse_tei_rerank_request,
    parse_tokenize_request,
)

logger = logging.getLogger("bertnpu.serve")

RETRY_AFTER_S = "1"
# After SIGTERM, what is queued or running gets this long; then it is answered 503 and the encoder
# closed (at most NpuEncoder.CLOSE_TIMEOUT_S more): a stop takes at most about 15 s, within a 30 s grace.
STOP_DRAIN_S = 10.0
Model = SentenceEncoder | CrossEncoder
# While another encode() call runs, a batcher worker that comes free waits at most this long for
# its clients' next requests (see batcher.py): 64 one-sentence clients then use 3% less CPU a request.
HOLD_S = 0.010
# A request with more characters than this is tokenized on a thread, so the event loop goes on
# answering other clients (a short request is tokenized in place: a thread hop costs more).
TOKENIZE_IN_LOOP_CHARS = 20_000


@dataclass(frozen=True)
class ServeSettings:
    """What `bertnpu serve` is given. `backend`: the encoder backend to open, and its settings."""

    bundle: Path
    model_name: str | None = None
    api_key: str | None = None
    max_batch_tokens: int = 16_384
    max_wait_ms: float = 0.0
    max_queue_requests: int = 1024
    max_queue_tokens: int | None = None  # None: 64 batches' worth (64 x max_batch_tokens)
    max_request_texts: int = 2048
    max_body_bytes: int = 2_000_000  # TEI's default payload limit
    on_overflow: str = "truncate"
    auto_truncate: bool = False  # TEI's: truncate on every route, whatever a request's `truncate` says
    cors_allow_origins: tuple[str, ...] = ()
    backend: BackendOptions = field(default_factory=BackendOptions)


class ModelService:
    """The model (a SentenceEncoder or a CrossEncoder, as the bundle's task says) and its batcher,
    opened on a thread of its own so that the server answers /health (503) while a bundle loads or
    NPU models launch."""

    def __init__(self, settings: ServeSettings, metrics: Metrics, open_encoder: Callable[[], Model]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._open_encoder = open_encoder
        self.encoder: Model | None = None
        self.batcher: Batcher | None = None
        self.model_name = settings.model_name
        self.state = "starting"
        self.failure: str | None = None
        self.ready = threading.Event()
        self.progress = ProgressLine()
        self.disconnects = DisconnectWatch()

    def open(self, on_ready: Callable[[ModelService], None], on_failure: Callable[[str], None]) -> None:
        try:
            encoder = self._open_encoder()
        except Exception as exc:  # noqa: BLE001 - a bad bundle, no device: the server says so and stops
            self.state, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            on_failure(self.failure)
            return
        self.encoder = encoder
        self.model_name = self.model_name or served_model_name(encoder)
        self.batcher = Batcher(
            self._encode_rows,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_wait_s=self.settings.max_wait_ms / 1000,
            max_queue_requests=self.settings.max_queue_requests,
            max_queue_tokens=self.settings.max_queue_tokens,
            on_dropped=self.metrics.cancelled_texts.inc,
            workers=encoder.pipeline.backend.hints.concurrent_calls + 1,  # and one kept for new requests
            hold_s=HOLD_S,
        )
        self.state = "ok"
        self.ready.set()
        on_ready(self)

    def begin_stop(self, drain_s: float = STOP_DRAIN_S) -> None:
        """A stop was asked for (SIGTERM): new requests get 503; what is queued or running gets
        `drain_s` to finish, then fails with 503 and the encoder is closed, which ends calls still
        on the device (a hung NPU core included) within its close bound. Returns at once."""
        if self.state == "stopping":
            return
        self.state = "stopping"
        threading.Thread(
            target=self._end_by, args=(time.monotonic() + drain_s,), name="bertnpu-stop", daemon=True
        ).start()

    def _end_by(self, deadline: float) -> None:
        batcher = self.batcher
        while batcher is not None and not batcher.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        if batcher is not None and not batcher.idle:
            stopped = RequestError(503, "the server is stopping; send the request again", code="stopping")
            failed = batcher.fail_queued(stopped)
            logger.warning("bertnpu serve: stopping; %d queued request(s) answered 503, closing the encoder", failed)
            if self.encoder is not None:
                self.encoder.close()  # in-flight calls end with EncoderClosedError: their requests get 503

    def close(self) -> None:
        """Release the batcher and the encoder (the NPU models); after begin_stop's drain, or at once."""
        self.state = "stopping"
        if self.batcher is not None:
            self.batcher.close(timeout_s=STOP_DRAIN_S)
        if self.encoder is not None:
            self.encoder.close()

    def health(self) -> str | None:
        """None when requests can be served; else why not, in one line."""
        if self.state != "ok" or self.encoder is None:
            return self.failure or f"the server is {self.state}"
        return self.encoder.pipeline.backend.health()

    def backend_stats(self) -> dict[str, float]:
        if self.encoder is None:
            return {}
        try:
            return self.encoder.pipeline.backend.stats()
        except EncoderClosedError:  # scraped while stopping
            return {}

    def opened(self) -> Model:
        """The model, once open; before, a 503 for the request that asks."""
        if self.encoder is None:
            raise RequestError(503, f"the server is {self.state}; retry shortly", code="not_ready")
        return self.encoder

    def embedding_model(self) -> SentenceEncoder:
        """The model, when it is an embedding model; else a 400 saying what this server serves."""
        model = self.opened()
        if not isinstance(model, SentenceEncoder):
            raise RequestError(
                400,
                f"this server serves a reranker ({self.model_name}), which makes no embeddings: use /rerank or /v1/rerank",
                code="wrong_model_task",
            )
        return model

    def reranker(self) -> CrossEncoder:
        """The model, when it is a one-label reranker; else a 400 saying what this server serves."""
        model = self.opened()
        if not isinstance(model, CrossEncoder):
            raise RequestError(
                400,
                f"this server serves an embedding model ({self.model_name}), which does not rerank: "
                "use /v1/embeddings or /embed",
                code="wrong_model_task",
            )
        if model.num_labels != 1:
            raise RequestError(
                400,
                f"reranking needs a model with one label; {self.model_name} has {model.num_labels}",
                code="wrong_model_task",
            )
        return model

    def _encode_rows(self, rows: TokenRows) -> np.ndarray:
        """A batcher worker's call: the vectors of every queued request's token rows, as the model
        makes them (shortened and normalized per request afterwards)."""
        encoder = self.opened()
        return encoder.pipeline.encode(rows, encoder.default_batch_size, progress=self._count_batches).vectors

    def _count_batches(self, batches: Iterator[HostBatch], texts: int) -> Iterator[HostBatch]:
        for batch in batches:
            self.metrics.encoder_batches.inc()
            yield batch

    async def embed(
        self,
        texts: list[str],
        *,
        dimensions: int | None,
        normalize: bool,
        fail_on_overflow: str | None,
        overflow_status: int = 400,
        truncation_direction: str = "right",
    ) -> tuple[np.ndarray, int]:
        """Vectors of `texts` (cut to `dimensions` and normalized when asked) and their token count;
        a text past the model's length keeps its first tokens, or its last with `truncation_direction` "left"."""
        self.embedding_model()
        vectors, tokens = await self._run(texts, fail_on_overflow, overflow_status, truncation_direction)
        return truncate_and_normalize(vectors, dimensions, normalize), tokens

    async def rerank(
        self, request: RerankRequest, *, fail_on_overflow: str | None, overflow_status: int = 400
    ) -> tuple[np.ndarray, int]:
        """Scores of (query, document) for each document, float32 [documents] (the logits with
        raw_scores, else through the model's activation), and their token count."""
        model = self.reranker()
        pairs = TextPairs((request.query, document) for document in request.documents)
        logits, tokens = await self._run(pairs, fail_on_overflow, overflow_status, request.truncation_direction)
        return activate(logits, "identity" if request.raw_scores else model.activation_fn), tokens

    async def _run(
        self,
        texts: list[str] | TextPairs,
        fail_on_overflow: str | None,
        overflow_status: int,
        truncation_direction: str = "right",
    ) -> tuple[np.ndarray, int]:
        """The model's rows for texts or pairs, and their token count. They are tokenized once,
        here (off the event loop when they are long), and their token rows queued.
        `fail_on_overflow` names the field for the error (of `overflow_status`) when a text is
        longer than the model's length (None: truncate, as encode() and predict() do)."""
        encoder, batcher = self.encoder, self.batcher
        if encoder is None or batcher is None or self.state != "ok":
            raise RequestError(503, f"the server is {self.state}; retry shortly", code="not_ready")
        arrived = time.monotonic()
        tokenizer = encoder.pipeline.tokenizer
        tokenize: Callable[[Any], TokenRows]
        if isinstance(texts, TextPairs):
            tokenize = functools.partial(tokenizer.encode_pairs, truncation_direction=truncation_direction)
            chars = sum(len(a) + len(b) for a, b in texts)
        else:
            tokenize = functools.partial(tokenizer.encode_unpadded, truncation_direction=truncation_direction)
            chars = sum(map(len, texts))
        rows = await asyncio.to_thread(tokenize, texts) if chars > TOKENIZE_IN_LOOP_CHARS else tokenize(texts)
        if fail_on_overflow is not None and rows.truncated.any():
            index = int(np.flatnonzero(rows.truncated)[0])
            raise RequestError(
                overflow_status,
                f"{fail_on_overflow}[{index}] is longer than this model's {encoder.max_seq_length} tokens",
                f"{fail_on_overflow}[{index}]",
                "input_too_long",
            )
        tokens = int(rows.lengths.sum())
        queued = time.monotonic()
        started: list[float] = []  # when its batch started, told by the batcher
        try:
            future = batcher.submit(rows, on_start=started.append)
        except QueueFull as exc:
            raise RequestError(503, f"the server is overloaded ({exc}); retry shortly", code="overloaded") from exc
        self.metrics.queue_requests.set(batcher.queued_requests)
        try:
            request = _BODY_READ.get()
            outputs = await (future if request is None else self.disconnects.result(future, request))
        except (BackendCallError, BackendUnavailableError, NpuTimeoutError, EncoderClosedError) as exc:
            raise RequestError(503, first_line(exc), code="backend_unavailable") from exc
        self.metrics.sentences.inc(len(texts))
        self.metrics.tokens.inc(tokens)
        self.progress.served(len(texts), tokens, batcher.queued_requests)
        done = time.monotonic()
        began = started[0] if started else queued
        _TIMING.set(Timing(queued - arrived, began - queued, done - began, done - arrived, tokens, chars))
        return outputs, tokens


class Timing(NamedTuple):
    """Where one request's time went, as TEI reports it in headers."""

    tokenization_s: float
    queue_s: float  # from queued to its batch's start
    inference_s: float  # its batch's encode()
    total_s: float
    tokens: int
    characters: int

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """TEI's x-*-time headers, in whole milliseconds as TEI writes them, and the request's size,
        encoded for Response.raw_headers (Response.headers.update scans every header per name)."""
        total = b"%d" % (self.total_s * 1000)
        return [
            (b"x-compute-time", total),
            (b"x-total-time", total),
            (b"x-tokenization-time", b"%d" % (self.tokenization_s * 1000)),
            (b"x-queue-time", b"%d" % (self.queue_s * 1000)),
            (b"x-inference-time", b"%d" % (self.inference_s * 1000)),
            (b"x-compute-tokens", b"%d" % self.tokens),
            (b"x-compute-characters", b"%d" % self.characters),
        ]


# The request this task serves, once its body is read (what its connection receives next is a disconnect).
_BODY_READ: ContextVar[Request | None] = ContextVar("bertnpu_body_read", default=None)
# The timing of the request this task serves, set by ModelService._run for the route's headers.
_TIMING: ContextVar[Timing | None] = ContextVar("bertnpu_timing", default=None)


def served_model_name(encoder: Model) -> str:
    """bundle.json's model_name, else its source_model, else the bundle folder's name."""
    manifest = encoder.manifest
    name = manifest.extra.get("model_name")
    if isinstance(name, str) and name:
        return name
    if manifest.source_model not in ("", "default") and not Path(manifest.source_model).is_absolute():
        return manifest.source_model
    return encoder.bundle_dir.resolve().name


def create_app(
    settings: ServeSettings,
    *,
    open_encoder: Callable[[], Model] | None = None,
    on_ready: Callable[[ModelService], None] = lambda service: None,
    on_failure: Callable[[str], None] = lambda failure: None,
) -> Starlette:
    """The Starlette app. The encoder opens in the background once the server starts."""
    service: ModelService
    metrics = Metrics(lambda: service.backend_stats())
    opener = open_encoder or (lambda: open_model(settings.bundle, settings.backend))
    service = ModelService(settings, metrics, opener)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=service.open, args=(on_ready, on_failure), name="bertnpu-open", daemon=True).start()
        yield
        await asyncio.to_thread(service.close)

    async def openai_embeddings(request: Request) -> Response:
        body = await _read_body(request, settings.max_body_bytes)
        parsed = parse_embeddings_request(body, service.embedding_model().dim, settings.max_request_texts)
        non_blank(parsed.texts, "input")
        check_model_name(parsed.model)
        overflow = openai_overflow("input")
        vectors, tokens = await service.embed(
            parsed.texts, dimensions=parsed.dimensions, normalize=True, fail_on_overflow=overflow
        )
        if parsed.encoding_format == "base64":
            rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            rows = list(vectors)
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json({"object": "list", "data": data, "model": service.model_name, "usage": usage})

    async def tei_root(request: Request) -> Response:
        """TEI's POST /, where huggingface_hub's InferenceClient posts: a similarity request when
        `inputs` is an object ({source_sentence, sentences}), else an embed request."""
        data = parse_json_object(await _read_body(request, settings.max_body_bytes))
        if isinstance(data.get("inputs"), dict):
            return await similarity_of(data)
        return await embed_of(data)

    async def tei_embed(request: Request) -> Response:
        return await embed_of(parse_json_object(await _read_body(request, settings.max_body_bytes)))

    async def embed_of(data: dict[str, Any]) -> Response:
        parsed = parse_embed_request(data, service.embedding_model().dim, settings.max_request_texts)
        non_blank(parsed.texts, "inputs")
        overflow = tei_overflow(parsed.truncate, "inputs")
        vectors, _ = await service.embed(
            with_prompt(parsed.prompt_name, parsed.texts),
            dimensions=parsed.dimensions,
            normalize=parsed.normalize,
            fail_on_overflow=overflow,
            overflow_status=413,
            truncation_direction=parsed.truncation_direction,
        )
        return _json(vectors)

    async def tei_rerank(request: Request) -> Response:
        body = await _read_body(request, settings.max_body_bytes)
        parsed = parse_tei_rerank_request(body, settings.max_request_texts)
        overflow = tei_overflow(parsed.truncate, "texts")
        scores, _ = await service.rerank(parsed, fail_on_overflow=overflow, overflow_status=413)
        text = (lambda i: {"text": parsed.documents[i]}) if parsed.return_documents else (lambda i: {})
        return _json([{"index": i, "score": float(scores[i]), **text(i)} for i in _best_first(scores)])

    async def rerank(request: Request) -> Response:
        body = await _read_body(request, settings.max_body_bytes)
        parsed = parse_rerank_request(body, settings.max_request_texts)
        check_model_name(parsed.model)
        overflow = openai_overflow("documents")
        scores, tokens = await service.rerank(parsed, fail_on_overflow=overflow)
        document = (
            (lambda i: {"document": {"text": parsed.documents[i]}}) if parsed.return_documents else (lambda i: {})
        )
        results = [
            {"index": i, "relevance_score": float(scores[i]), **document(i)}
            for i in _best_first(scores)[: parsed.top_n]
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json({"object": "list", "results": results, "model": service.model_name, "usage": usage})

    def tei_overflow(truncate: bool, field: str) -> str | None:
        """The field a too-long text is refused under on TEI's routes (413), or None to truncate:
        the request's `truncate`, or --auto-truncate."""
        return None if truncate or settings.auto_truncate else field

    def openai_overflow(field: str) -> str | None:
        """The same on the OpenAI-style routes: refused (400) only with --on-overflow error."""
        return field if settings.on_overflow == "error" and not settings.auto_truncate else None

    def with_prompt(name: str | None, texts: list[str]) -> list[str]:
        """The texts with the model's prompt `name` before each, as encode(prompt_name=) puts it."""
        if name is None:
            return texts
        model = service.embedding_model()
        if name not in model.prompts:
            known = sorted(model.prompts) or "none"
            raise RequestError(
                422, f"'prompt_name' {name!r:.40} is not one of this model's prompts: {known}", "prompt_name"
            )
        if not model.manifest.include_prompt:
            raise RequestError(
                422,
                "'prompt_name' is not served for a model that pools without its prompt: use encode()",
                "prompt_name",
            )
        return [model.prompts[name] + text for text in texts]

    def check_model_name(model: str | None) -> None:
        if model is not None and model != service.model_name:
            raise RequestError(
                404,
                f"The model `{model}` does not exist; this server serves `{service.model_name}`",
                "model",
                "model_not_found",
            )

    def model_card() -> dict[str, Any]:
        return {"id": service.model_name, "object": "model", "created": 0, "owned_by": "bertnpu"}

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": [model_card()]})

    async def one_model(request: Request) -> Response:
        check_model_name(request.path_params["model"])
        return _json(model_card())

    async def tokenize(request: Request) -> Response:
        parsed = parse_tokenize_request(await _read_body(request, settings.max_body_bytes), settings.max_request_texts)
        tokenizer = service.opened().pipeline.tokenizer
        return _json(await asyncio.to_thread(tokenizer.describe, parsed.texts, parsed.add_special_tokens))

    async def decode(request: Request) -> Response:
        parsed = parse_decode_request(await _read_body(request, settings.max_body_bytes), settings.max_request_texts)
        return _json(service.opened().pipeline.tokenizer.decode(parsed.ids, parsed.skip_special_tokens))

    async def similarity(request: Request) -> Response:
        return await similarity_of(parse_json_object(await _read_body(request, settings.max_body_bytes)))

    async def similarity_of(data: dict[str, Any]) -> Response:
        parsed = parse_similarity_request(data, settings.max_request_texts)
        texts = with_prompt(parsed.prompt_name, non_blank([parsed.source, *parsed.sentences], "inputs"))
        overflow = tei_overflow(parsed.truncate, "inputs")
        vectors, _ = await service.embed(
            texts,
            dimensions=None,
            normalize=True,
            fail_on_overflow=overflow,
            overflow_status=413,
            truncation_direction=parsed.truncation_direction,
        )
        return _json((vectors[1:] @ vectors[0]).astype(float).tolist())  # cosines: the vectors are unit length

    async def info(request: Request) -> Response:
        model = service.opened()
        manifest = model.manifest
        kind = (
            {"reranker": {"num_labels": model.num_labels}}
            if isinstance(model, CrossEncoder)
            else {"embedding": {"pooling": manifest.pooling}}
        )
        return _json(
            {
                "model_id": service.model_name,
                "model_dtype": model.options.onnx.precision if model.backend == "onnx" else "int8 (NPU)",
                "model_type": kind,
                "max_input_length": model.max_seq_length,
                "max_batch_tokens": settings.max_batch_tokens,
                "max_client_batch_size": settings.max_request_texts,
                "max_concurrent_requests": settings.max_queue_requests,
                "auto_truncate": settings.auto_truncate,
                "version": __version__,
                "backend": model.backend,
                "npu_cores": [list(core) for core in model.npu_cores_in_service],
            }
        )

    def authorized(handler: Callable[[Request], Awaitable[Response]], endpoint: str, errors: Callable) -> Callable:
        async def route(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if settings.api_key is not None and not _bearer_matches(request, settings.api_key):
                    raise RequestError(
                        401, "Incorrect or missing API key: send Authorization: Bearer <key>", code="invalid_api_key"
                    )
                if not service.ready.is_set() and endpoint != "/v1/models":
                    raise RequestError(503, f"the server is {service.state}; retry shortly", code="not_ready")
                _TIMING.set(None)
                _BODY_READ.set(None)
                response = await handler(request)
                if (timing := _TIMING.get()) is not None:
                    response.raw_headers.extend(timing.raw_headers())
            except ClientLeft:
                response = Response(status_code=499)  # nginx's "client closed request"; nobody reads it
            except RequestError as exc:
                response = errors(exc)
            except Exception as exc:
                logger.exception("bertnpu serve: %s failed", endpoint)
                response = errors(
                    RequestError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
                )
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
            if service.batcher is not None:
                metrics.queue_requests.set(service.batcher.queued_requests)
            return response

        return route

    async def health(request: Request) -> Response:
        problem = service.health()
        status: dict[str, Any] = {"status": "ok" if problem is None else service.state, "model": service.model_name}
        if service.encoder is not None and service.state == "ok":
            encoder = service.encoder
            status.update(backend=encoder.backend, npu_cores_in_service=encoder.npu_cores_in_service)
        if problem is not None:
            status["status"] = "unhealthy" if service.state == "ok" else service.state
            status["error"] = problem
        return _json(status, 200 if problem is None else 503, retry=problem is not None and service.state != "failed")

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    openai_route = authorized(openai_embeddings, "/v1/embeddings", _openai_error)
    routes = [
        Route("/v1/embeddings", openai_route, methods=["POST"]),
        Route("/embeddings", openai_route, methods=["POST"]),
        Route("/", authorized(tei_root, "/", _tei_error), methods=["POST"]),
        Route("/embed", authorized(tei_embed, "/embed", _tei_error), methods=["POST"]),
        Route("/tokenize", authorized(tokenize, "/tokenize", _tei_error), methods=["POST"]),
        Route("/decode", authorized(decode, "/decode", _tei_error), methods=["POST"]),
        Route("/similarity", authorized(similarity, "/similarity", _tei_error), methods=["POST"]),
        Route("/info", authorized(info, "/info", _tei_error), methods=["GET"]),
        Route("/rerank", authorized(tei_rerank, "/rerank", _tei_error), methods=["POST"]),
        Route("/v1/rerank", authorized(rerank, "/v1/rerank", _openai_error), methods=["POST"]),
        Route("/v1/models", authorized(models, "/v1/models", _openai_error), methods=["GET"]),
        Route("/models", authorized(models, "/v1/models", _openai_error), methods=["GET"]),
        Route("/v1/models/{model:path}", authorized(one_model, "/v1/models", _openai_error), methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    cors = Middleware(
        CORSMiddleware, allow_origins=list(settings.cors_allow_origins), allow_methods=["*"], allow_headers=["*"]
    )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _route_error, 405: _route_error},
        middleware=[cors] if settings.cors_allow_origins else None,
    )
    app.state.service = service
    return app


async def _route_error(request: Request, exc: Exception) -> Response:
    """404 and 405 as JSON, in the error shape of the API the path belongs to (OpenAI's under /v1)."""
    status = getattr(exc, "status_code", 404)
    what = "no such route" if status == 404 else f"{request.method} is not allowed here"
    error = RequestError(
        status,
        f"{what}: {request.method} {request.url.path}",
        code="not_found" if status == 404 else "method_not_allowed",
    )
    return _openai_error(error) if request.url.path.startswith("/v1/") else _tei_error(error)


def _bearer_matches(request: Request, key: str) -> bool:
    """Authorization: Bearer <key>, the scheme in any case (RFC 7235)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token.strip() == key


def _best_first(scores: np.ndarray) -> list[int]:
    """Indices by score, highest first (ties in input order)."""
    return np.argsort(-scores, kind="stable").tolist()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body has {declared} bytes, more than this server's limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is larger than this server's limit of {limit} bytes")
        chunks.append(chunk)
    _BODY_READ.set(request)
    return b"".join(chunks)


def _json(content: Any, status: int = 200, *, retry: bool = False) -> Response:
    headers = {"Retry-After": RETRY_AFTER_S} if retry else None
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, "application/json")


def _openai_error(error: RequestError) -> Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    body = {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}
    return _json(body, error.status, retry=error.status == 503)


def _tei_error(error: RequestError) -> Response:
    """TEI's error shape: {"error", "error_type"}; an overloaded queue is TEI's 429."""
    status, kind = error.status, "Validation"
    if error.status == 503:
        status, kind = (429, "Overloaded") if error.code == "overloaded" else (503, "Unhealthy")
    elif error.status >= 500:
        kind = "Backend"
    elif error.status == 401:
        kind = "Unauthorized"
    return _json({"error": error.message, "error_type": kind}, status, retry=status in (429, 503))
