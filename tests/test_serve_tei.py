"""`bertnpu serve` as TEI and OpenAI clients expect it (#35, routes and fields): POST /, /tokenize,
/decode, /info, /similarity, GET /v1/models/{id} and /models, blank texts refused by index, JSON
404/405 in each API's shape, a case-insensitive bearer scheme. A real server on 127.0.0.1."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest
from serving import ServerProcess
from tokenizers import Tokenizer as HfTokenizer

from bertnpu_runtime import SentenceEncoder

TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "A chef slices onions."]


@pytest.fixture(scope="module")
def server(tiny_bundle):
    process = ServerProcess(tiny_bundle, "--model-name", "tiny", "--api-key", "s3cret")
    yield process
    process.stop()


AUTH = {"Authorization": "bearer s3cret"}  # the scheme in lower case, as some clients send it


def post(server, route: str, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, headers=AUTH, timeout=30)


def test_post_to_the_root_is_teis_embed(server, tiny_bundle):
    """huggingface_hub's InferenceClient(model=URL).feature_extraction POSTs to /."""
    answer = post(server, "/", {"inputs": TEXTS})
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode(TEXTS, normalize_embeddings=True)
    assert answer.status_code == 200
    np.testing.assert_allclose(np.array(answer.json()), expected, atol=1e-5)


def test_huggingface_hubs_inference_client(server, tiny_bundle, monkeypatch):
    """The client as users call it on a TEI URL: feature_extraction (with TEI's options) and
    sentence_similarity, both POSTed to /."""
    from huggingface_hub import InferenceClient

    # The tests run with HF_HUB_OFFLINE=1, which blocks the client's every request; this one only
    # reaches the loopback server.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    client = InferenceClient(model=server.url, token="s3cret", timeout=30)
    long_text = "the dog runs in the park " * 40 + "and the cat sleeps"  # past the model's 48 tokens
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        expected = reference.encode([*TEXTS, long_text], normalize_embeddings=True)
        cosines = expected[1:3] @ expected[0]
    vectors = client.feature_extraction(TEXTS, normalize=True)
    np.testing.assert_allclose(vectors, expected[:3], atol=1e-5)
    first = client.feature_extraction(long_text, truncate=True, truncation_direction="right")
    last = client.feature_extraction(long_text, truncate=True, truncation_direction="left")
    np.testing.assert_allclose(first, expected[3:], atol=1e-5)
    assert not np.allclose(last, first, atol=1e-3)  # the text's last tokens, not its first
    np.testing.assert_allclose(client.sentence_similarity(TEXTS[0], TEXTS[1:]), cosines, atol=1e-5)


def test_tokenize_and_decode(server, tiny_bundle):
    library = HfTokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    tokens = post(server, "/tokenize", {"inputs": TEXTS[0]}).json()
    [row] = tokens
    assert [t["id"] for t in row] == library.encode(TEXTS[0]).ids
    assert row[0]["special"] and row[0]["start"] is None
    word = row[1]
    assert not word["special"] and TEXTS[0][word["start"] : word["stop"]].lower() == word["text"]
    plain = post(server, "/tokenize", {"inputs": TEXTS, "add_special_tokens": False}).json()
    assert len(plain) == 3 and not any(t["special"] for t in plain[0])
    ids = [t["id"] for t in row]
    assert post(server, "/decode", {"ids": ids}).json() == [library.decode(ids)]
    assert post(server, "/decode", {"ids": [ids, ids[:3]], "skip_special_tokens": False}).json()[0].startswith("[CLS]")
    assert post(server, "/decode", {"ids": [1, -2]}).status_code == 422


def test_similarity_is_the_cosine_of_the_vectors(server, tiny_bundle):
    answer = post(server, "/similarity", {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}})
    with SentenceEncoder(tiny_bundle, backend="onnx") as reference:
        vectors = reference.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(answer.json(), vectors[1:] @ vectors[0], atol=1e-5)
    missing = post(server, "/similarity", {"inputs": {"source_sentence": "x"}})
    assert missing.status_code == 422 and "inputs.sentences" in missing.text


def test_info_and_models(server):
    info = httpx.get(f"{server.url}/info", headers=AUTH).json()
    assert info["model_id"] == "tiny" and info["max_input_length"] == 48 and info["backend"] == "onnx"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["version"]
    card = httpx.get(f"{server.url}/v1/models/tiny", headers=AUTH)
    assert card.status_code == 200 and card.json()["id"] == "tiny"
    other = httpx.get(f"{server.url}/v1/models/other", headers=AUTH)
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{server.url}/models", headers=AUTH).json()["data"][0]["id"] == "tiny"


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/embeddings", {"input": ["fine", "   "]}, "input[1]"),
        ("/v1/embeddings", {"input": ""}, "input"),
        ("/embed", {"inputs": ["fine", "\u00a0\n"]}, "inputs[1]"),
        ("/", {"inputs": [""]}, "inputs"),
    ],
)
def test_empty_or_blank_texts_are_400_naming_the_index(server, route, body, field):
    answer = post(server, route, body)
    assert answer.status_code == 400 and f"{field} is empty or only whitespace" in answer.text


def test_unknown_routes_and_methods_answer_json_in_each_apis_shape(server):
    openai = httpx.get(f"{server.url}/v1/nothing-here", headers=AUTH)
    assert openai.status_code == 404 and openai.json()["error"]["code"] == "not_found"
    tei = httpx.get(f"{server.url}/nothing-here")
    assert tei.status_code == 404 and "no such route" in tei.json()["error"]
    wrong_method = httpx.get(f"{server.url}/embed")
    assert wrong_method.status_code == 405 and "GET is not allowed" in wrong_method.json()["error"]


def test_the_bearer_scheme_is_case_insensitive_and_the_key_is_not(server):
    for scheme, status in (("Bearer", 200), ("BEARER", 200), ("bearer", 200), ("Basic", 401)):
        answer = httpx.post(f"{server.url}/embed", json={"inputs": "a"}, headers={"Authorization": f"{scheme} s3cret"})
        assert answer.status_code == status, scheme
    assert (
        httpx.post(f"{server.url}/embed", json={"inputs": "a"}, headers={"Authorization": "bearer S3CRET"}).status_code
        == 401
    )


@pytest.fixture(scope="module")
def configured(tmp_path_factory, tiny_model_dir):
    """A server with TEI's options, on a model with a "query" prompt."""
    from compile import build_bundle

    bundle = build_bundle(
        str(tiny_model_dir), tmp_path_factory.mktemp("prompted") / "b", calib_samples=2, prompts={"query": "query: "}
    )
    process = ServerProcess(
        bundle, "--auto-truncate", "--payload-limit", "3000", "--cors-allow-origin", "https://app.example"
    )
    yield process, bundle
    process.stop()


def test_prompt_name_is_applied_and_an_unknown_one_is_422(configured):
    process, bundle = configured
    with SentenceEncoder(bundle, backend="onnx") as reference:
        expected = reference.encode(TEXTS[:2], prompt_name="query", normalize_embeddings=True)
    answer = httpx.post(f"{process.url}/embed", json={"inputs": TEXTS[:2], "prompt_name": "query"})
    np.testing.assert_allclose(np.array(answer.json()), expected, atol=1e-5)
    unknown = httpx.post(f"{process.url}/embed", json={"inputs": "a", "prompt_name": "nope"})
    assert unknown.status_code == 422 and "'prompt_name' 'nope' is not one of this model's prompts" in unknown.text
    for direction, status in (("Left", 200), ("Right", 200), ("middle", 422), (1, 422)):
        answer = httpx.post(f"{process.url}/embed", json={"inputs": "a", "truncation_direction": direction})
        assert answer.status_code == status and (status == 200 or "truncation_direction" in answer.text)


def test_auto_truncate_payload_limit_and_cors(configured):
    process, _ = configured
    long_text = "the dog runs in the park " * 40  # past the model's 48 tokens
    assert (
        httpx.post(f"{process.url}/embed", json={"inputs": long_text}).status_code == 200
    )  # 413 without --auto-truncate
    assert httpx.get(f"{process.url}/info").json()["auto_truncate"] is True
    too_big = httpx.post(f"{process.url}/embed", json={"inputs": "x" * 4000})
    assert too_big.status_code == 413 and "3000" in too_big.text
    preflight = httpx.options(
        f"{process.url}/v1/embeddings",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    stranger = httpx.options(
        f"{process.url}/v1/embeddings",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in stranger.headers


def test_teis_timing_headers(server):
    answer = post(server, "/embed", {"inputs": TEXTS})
    headers = answer.headers
    for name in ("x-compute-time", "x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert int(headers[name]) >= 0, name
    assert int(headers["x-compute-time"]) >= int(headers["x-inference-time"])
    assert int(headers["x-compute-characters"]) == sum(map(len, TEXTS))
    usage = post(server, "/v1/embeddings", {"input": TEXTS}).json()["usage"]["total_tokens"]
    assert int(headers["x-compute-tokens"]) == usage
    assert "x-compute-time" not in httpx.get(f"{server.url}/health").headers  # only routes that compute


def test_an_abandoned_request_never_reaches_the_encoder(tiny_bundle):
    """A client that times out while its request is queued: its texts are dropped before the encoder
    (before, 4 clients abandoning 64 texts each cost the next one-sentence request 20 s)."""
    import re
    import threading
    import time

    from serving import server_in_thread

    from bertnpu_runtime.backends.onnx import OnnxEncoder
    from bertnpu_runtime.serve.app import ServeSettings, create_app

    gate = threading.Event()

    class Gated:
        """A run-only backend (one batcher worker for new requests, as no big one runs) whose calls wait for `gate`; counts sentences."""

        def __init__(self) -> None:
            self.onnx, self.sentences = OnnxEncoder(tiny_bundle / "encoder.onnx"), 0

        def run(self, hidden, mask):
            self.sentences += len(hidden)
            assert gate.wait(30)
            return self.onnx.run(hidden, mask)

    backend = Gated()
    app = create_app(
        ServeSettings(bundle=tiny_bundle), open_encoder=lambda: SentenceEncoder(tiny_bundle, backend=backend)
    )
    with server_in_thread(app) as url:
        busy = threading.Thread(
            target=lambda: httpx.post(f"{url}/embed", json={"inputs": "hold the encoder"}, timeout=30)
        )
        busy.start()
        while backend.sentences == 0:
            time.sleep(0.01)
        with pytest.raises(httpx.TimeoutException):  # queued behind the gate; the client gives up
            httpx.post(f"{url}/embed", json={"inputs": [f"abandoned {i}" for i in range(10)]}, timeout=0.5)
        time.sleep(0.3)  # the server hears the disconnect
        gate.set()
        busy.join(30)
        after = httpx.post(f"{url}/embed", json={"inputs": "the next one"}, timeout=30)
        assert after.status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
    assert backend.sentences == 2  # the busy request's and the next one's: none of the 10 abandoned
    assert float(re.search(r"^bertnpu_cancelled_texts_total (\S+)$", metrics, re.M)[1]) == 10


def test_progress_is_one_line_per_interval_however_many_requests():
    """-v: the totals of an interval in one line, written when a request ends after the interval."""
    from bertnpu_runtime.serve.progress import ProgressLine

    now = [0.0]
    progress = ProgressLine(interval_s=10.0, clock=lambda: now[0])
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("bertnpu.serve.progress")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        for second in range(25):  # four requests a second for 25 s: lines at 10 s and 20 s only
            for _ in range(4):
                now[0] = second + 0.1
                progress.served(texts=3, tokens=30, queued_requests=2)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(lines) == 2
    assert lines[0].startswith("served 41 requests, 123 texts, 1230 tokens in the last 10 s")
    assert lines[0].endswith("2 requests queued")
    assert lines[1].startswith("served 40 requests, 120 texts, 1200 tokens in the last 10 s")


def test_a_verbose_server_prints_no_bar_per_batch(tiny_bundle):
    process = ServerProcess(tiny_bundle, "-v", "--max-batch-tokens", "64")
    try:
        for _ in range(20):
            assert httpx.post(f"{process.url}/embed", json={"inputs": TEXTS}, timeout=30).status_code == 200
    finally:
        code, stderr = process.stop()
    assert code == 0, stderr
    assert "Sentences" not in stderr and "it/s" not in stderr, stderr  # encode()'s tqdm bar
    assert stderr.count("served ") <= 1, stderr  # the run is shorter than two intervals
