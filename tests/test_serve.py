"""`bertnpu serve` as clients see it: a live server on 127.0.0.1, the real `openai` client, TEI's
/embed, every refusal with its status and message, batching across clients, overload, and a stop
in the middle of the load."""

from __future__ import annotations

import base64
import concurrent.futures
import re
import signal
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from serving import ServerProcess, server_in_thread, wait_healthy
from vectors import cosine_rows

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.serve.app import ServeSettings, create_app
from bertnpu_runtime.testing import FakeNpu, bundle_with_placeholder_mxq

TEXTS = [f"sentence {i}: a dog runs across the {'green ' * (i % 4)}park" for i in range(64)]
LONG = "word " * 400  # over the tiny model's 48 tokens


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    with SentenceEncoder(tiny_bundle, backend="onnx") as encoder:
        yield encoder


@pytest.fixture(scope="module")
def server(tiny_bundle):
    # A batch waits up to 20 ms for more requests: a burst of one-sentence requests, each on a new
    # connection, arrives over tens of milliseconds, longer than the tiny model takes to encode.
    process = ServerProcess(tiny_bundle, "--model-name", "tiny", "--max-request-texts", "100", "--max-wait-ms", "20")
    yield process
    code, log = process.stop()
    assert code == 0, log


def client(server, **kwargs):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def normalized(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_the_openai_client_gets_the_vectors_of_encode(server, reference, encoding_format):
    options = {} if encoding_format is None else {"encoding_format": encoding_format}  # the client's default: base64
    response = client(server).embeddings.create(model="tiny", input=TEXTS[:8], **options)
    assert response.model == "tiny" and [d.index for d in response.data] == list(range(8))
    got = [d.embedding for d in response.data]
    if encoding_format == "base64":  # the client hands base64 back undecoded when asked for it explicitly
        got = [np.frombuffer(base64.b64decode(e), "<f4") for e in got]
    expected = reference.encode(TEXTS[:8])
    assert cosine_rows(got, expected).min() >= 0.99999
    assert (
        response.usage.prompt_tokens == response.usage.total_tokens == int(reference.tokenize(TEXTS[:8]).lengths.sum())
    )


def test_langchains_openai_embeddings(server, reference):
    """LangChain's OpenAIEmbeddings, sending strings (check_embedding_ctx_length=False: by
    default it sends tiktoken ids, which the server refuses with that hint; tiktoken would also
    fetch its vocabulary from the network)."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="tiny", base_url=f"{server.url}/v1", api_key="unused", max_retries=0, check_embedding_ctx_length=False
    )
    expected = reference.encode(TEXTS[:5])
    assert cosine_rows(embeddings.embed_documents(TEXTS[:5]), expected).min() >= 0.99999
    assert cosine_rows([embeddings.embed_query(TEXTS[0])], expected[:1]).min() >= 0.99999


def test_a_single_string_and_matryoshka_dimensions(server, reference):
    response = client(server).embeddings.create(model="tiny", input=TEXTS[0], dimensions=8, encoding_format="float")
    (item,) = response.data
    expected = normalized(reference.encode(TEXTS[0])[:8])
    np.testing.assert_allclose(item.embedding, expected, atol=1e-6)
    assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-6)


def test_tei_embed(server, reference):
    vectors = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS[:4]}).json()
    assert cosine_rows(vectors, reference.encode(TEXTS[:4])).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalize defaults to true
    raw = httpx.post(f"{server.url}/embed", json={"inputs": TEXTS[0], "normalize": False}).json()
    np.testing.assert_allclose(raw[0], reference.encode(TEXTS[0]), atol=1e-5)
    short = httpx.post(f"{server.url}/embed", json={"inputs": [TEXTS[0]], "dimensions": 5}).json()
    np.testing.assert_allclose(short[0], normalized(reference.encode(TEXTS[0])[:5]), atol=1e-6)


def test_tei_long_inputs_are_413_unless_truncated(server, reference):
    refused = httpx.post(f"{server.url}/embed", json={"inputs": ["short", LONG]})
    assert refused.status_code == 413 and refused.json() == {
        "error": "inputs[1] is longer than this model's 48 tokens",
        "error_type": "Validation",
    }
    cut = httpx.post(f"{server.url}/embed", json={"inputs": [LONG], "truncate": True, "normalize": False})
    np.testing.assert_allclose(cut.json()[0], reference.encode(LONG), atol=1e-5)


def openai_error(response):
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return response.status_code, body["error"]


@pytest.mark.parametrize(
    ("body", "status", "message", "param"),
    [
        ({"input": ["a", "b", "c", None]}, 400, "input[3] must be a string, found null", "input[3]"),
        ({"input": ["a", 5]}, 400, "input[1] must be a string, found a number", "input[1]"),
        ({"input": []}, 400, "'input' must not be an empty list", "input"),
        ({"input": {"text": "a"}}, 400, "'input' must be a string or a list of strings, found an object", "input"),
        ({}, 400, "'input' is required", "input"),
        (
            {"input": "a", "encoding_format": "int8"},
            400,
            "'encoding_format' must be 'float' or 'base64'",
            "encoding_format",
        ),
        ({"input": "a", "dimensions": 33}, 400, "'dimensions' must be between 1 and 32", "dimensions"),
        ({"input": "a", "dimensions": "8"}, 400, "'dimensions' must be an integer, found a string", "dimensions"),
        ({"input": "a", "model": "gpt-4"}, 404, "The model `gpt-4` does not exist", "model"),
        ({"input": ["a"] * 101}, 413, "'input' has 101 texts, more than this server's limit of 100", "input"),
    ],
)
def test_bad_requests_name_the_field(server, body, status, message, param):
    got_status, error = openai_error(httpx.post(f"{server.url}/v1/embeddings", json=body))
    assert got_status == status and error["message"].startswith(message) and error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("ids", [[101, 2023, 102], [[101, 2023], [101, 102]]])
def test_token_id_arrays_are_refused_saying_how_to_turn_them_off(server, ids):
    status, error = openai_error(httpx.post(f"{server.url}/v1/embeddings", json={"input": ids}))
    assert status == 400 and error["code"] == "token_ids_not_supported"
    assert "check_embedding_ctx_length=False" in error["message"]


def test_a_body_that_is_not_json_or_too_large(server):
    status, error = openai_error(httpx.post(f"{server.url}/v1/embeddings", content=b"{not json"))
    assert status == 400 and error["message"].startswith("the request body is not valid JSON")
    huge = b'{"input": "' + b"a" * (17 << 20) + b'"}'
    status, error = openai_error(httpx.post(f"{server.url}/v1/embeddings", content=huge))
    assert status == 413 and "more than this server's limit" in error["message"]


def test_models_health_and_metrics(server):
    models = httpx.get(f"{server.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["object"] == "list"
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["backend"] == "onnx"
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        "bertnpu_requests_total",
        "bertnpu_encoder_batches_total",
        "bertnpu_sentences_total",
        "bertnpu_tokens_total",
        "bertnpu_queue_requests",
        "bertnpu_request_seconds_bucket",
    ):
        assert name in metrics


def metric(server, name):
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_64_concurrent_clients_all_get_their_own_vectors(server, reference):
    batches_before = metric(server, "bertnpu_encoder_batches_total")
    barrier = threading.Barrier(64)

    def one(i):
        barrier.wait()
        return httpx.post(f"{server.url}/v1/embeddings", json={"input": TEXTS[i], "model": "tiny"}, timeout=60).json()

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    got = [answer["data"][0]["embedding"] for answer in answers]
    assert cosine_rows(got, reference.encode(TEXTS)).min() >= 0.99999  # whoever shared the batch
    assert metric(server, "bertnpu_encoder_batches_total") - batches_before < 64


class WaitsForGate:
    """An encoder backend (run only) whose batches wait for `gate`: meanwhile requests queue."""

    def __init__(self, onnx, gate):
        self.onnx, self.gate, self.waiting_sentences = onnx, gate, 0
        self._count_lock = threading.Lock()  # each batcher worker's encode() runs here

    def run(self, hidden, mask):
        with self._count_lock:
            self.waiting_sentences += len(hidden)
        assert self.gate.wait(30), "the test never opened the gate"
        return self.onnx.run(hidden, mask)


def test_requests_queued_while_the_encoder_is_busy_share_a_batch(tiny_bundle, reference):
    from bertnpu_runtime.backends.onnx import OnnxEncoder

    gate = threading.Event()
    backend = WaitsForGate(OnnxEncoder(tiny_bundle / "encoder.onnx"), gate)
    app = create_app(
        ServeSettings(bundle=tiny_bundle), open_encoder=lambda: SentenceEncoder(tiny_bundle, backend=backend)
    )
    with server_in_thread(app) as url:
        batcher = app.state.service.batcher
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v1/embeddings", json={"input": t}, timeout=60) for t in TEXTS]
            deadline = time.monotonic() + 30
            while batcher.queued_requests + backend.waiting_sentences < 64 and time.monotonic() < deadline:
                time.sleep(0.01)
            workers, batch_size = batcher.workers, app.state.service.encoder.default_batch_size
            assert backend.waiting_sentences <= workers * batch_size  # one batch in each worker's encode()
            gate.set()
            answers = [f.result().json()["data"][0]["embedding"] for f in futures]
        batches = float(re.search(r"^bertnpu_encoder_batches_total (\S+)$", httpx.get(f"{url}/metrics").text, re.M)[1])
    assert cosine_rows(answers, reference.encode(TEXTS)).min() >= 0.99999
    # one batch in each waiting encode(), then the rest in one encode() of two full batches
    assert batches <= workers + 2


def test_an_api_key_is_required_when_set(tiny_bundle, reference):
    process = ServerProcess(tiny_bundle, "--api-key", "s3cret")
    try:
        for key in ("wrong", None):
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            status, error = openai_error(
                httpx.post(f"{process.url}/v1/embeddings", json={"input": "a"}, headers=headers)
            )
            assert status == 401 and error["code"] == "invalid_api_key"
        assert httpx.post(f"{process.url}/embed", json={"inputs": "a"}).status_code == 401
        response = client(process, api_key="s3cret").embeddings.create(
            model="model", input="a dog", encoding_format="float"
        )
        assert cosine_rows([response.data[0].embedding], [reference.encode("a dog")]).min() >= 0.99999
        assert httpx.get(f"{process.url}/health").status_code == 200  # probes need no key
    finally:
        assert process.stop()[0] == 0


def test_on_overflow_error(tiny_bundle):
    process = ServerProcess(tiny_bundle, "--on-overflow", "error")
    try:
        status, error = openai_error(httpx.post(f"{process.url}/v1/embeddings", json={"input": ["ok", "fine", LONG]}))
        assert status == 400 and error["message"] == "input[2] is longer than this model's 48 tokens"
    finally:
        assert process.stop()[0] == 0


def test_a_stop_during_load_loses_no_accepted_request(tiny_bundle, reference):
    # A batch waits up to 2 s for company: all 16 requests are queued when SIGTERM comes.
    process = ServerProcess(tiny_bundle, "--max-wait-ms", "2000")

    def one(i):
        return httpx.post(
            f"{process.url}/v1/embeddings", json={"input": TEXTS[i], "encoding_format": "float"}, timeout=60
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        deadline = time.monotonic() + 30
        while metric(process, "bertnpu_queue_requests") < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert metric(process, "bertnpu_queue_requests") == 16
        code, log = process.stop(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert code == 0, log
    assert [a.status_code for a in answers] == [200] * 16
    got = [a.json()["data"][0]["embedding"] for a in answers]
    assert cosine_rows(got, reference.encode(TEXTS[:16])).min() >= 0.99999


@pytest.fixture(scope="module")
def npu_bundle(tiny_bundle, tmp_path_factory):
    return bundle_with_placeholder_mxq(tiny_bundle, tmp_path_factory.mktemp("serve") / "bundle")


def test_the_npu_path_through_the_double_on_several_cores(npu_bundle, reference):
    fake = FakeNpu(npu_bundle / "encoder.onnx", latency_s=1e-3)
    settings = ServeSettings(bundle=npu_bundle)
    app = create_app(
        settings, open_encoder=lambda: SentenceEncoder(npu_bundle, backend="npu", npu_cores=4, qbruntime_module=fake)
    )
    with server_in_thread(app) as url:
        assert httpx.get(f"{url}/health").json()["npu_cores_in_service"] == [[0, 0], [0, 1], [0, 2], [0, 3]]
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            answers = list(
                pool.map(lambda t: httpx.post(f"{url}/embed", json={"inputs": t}, timeout=60).json()[0], TEXTS[:32])
            )
    assert cosine_rows(answers, reference.encode(TEXTS[:32])).min() >= 0.99999
    assert len({call.core for call in fake.calls}) == 4
    assert fake.busy_cores() == set()  # the server's stop released the NPU models


def test_a_full_queue_is_503_with_retry_after(npu_bundle):
    fake = FakeNpu(npu_bundle / "encoder.onnx", latency_s=0.05)  # slow: the queue fills
    settings = ServeSettings(bundle=npu_bundle, max_queue_requests=2, max_batch_tokens=16)
    app = create_app(
        settings, open_encoder=lambda: SentenceEncoder(npu_bundle, backend="npu", npu_cores=1, qbruntime_module=fake)
    )
    with server_in_thread(app) as url:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(
                pool.map(lambda t: httpx.post(f"{url}/v1/embeddings", json={"input": t}, timeout=60), TEXTS[:24])
            )
        refused = [a for a in answers if a.status_code == 503]
        assert refused and all(a.headers["retry-after"] == "1" for a in refused)
        assert openai_error(refused[0])[1]["code"] == "overloaded"
        assert any(a.status_code == 200 for a in answers)
        assert httpx.post(f"{url}/embed", json={"inputs": "still serving"}).status_code == 200


def test_health_is_503_until_the_encoder_is_open(tiny_bundle):
    release = threading.Event()

    def slow_open():
        release.wait(30)
        return SentenceEncoder(tiny_bundle, backend="onnx")

    app = create_app(ServeSettings(bundle=tiny_bundle), open_encoder=slow_open)
    try:
        with server_in_thread(app, healthy=False) as url:
            health = httpx.get(f"{url}/health")
            assert health.status_code == 503 and health.json()["status"] == "starting" and health.headers["retry-after"]
            status, error = openai_error(httpx.post(f"{url}/v1/embeddings", json={"input": "early"}))
            assert status == 503 and error["code"] == "not_ready"
            release.set()
            wait_healthy(url)
    finally:
        release.set()


def test_serve_without_the_extra_prints_which_to_install(tiny_bundle):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'starlette': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from bertnpu_runtime.cli import main\n"
        f"sys.exit(main(['serve', '--bundle', {str(tiny_bundle)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "pip install 'bertnpu[serve]'" in result.stderr
