"""`bertnpu serve` on a reranker bundle: TEI's /rerank and the Cohere/Jina-style /v1/rerank, against
CrossEncoder.predict; the embedding routes refused on it, and the rerank routes on an embedding
bundle. Real servers on 127.0.0.1, stopped at the end."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import numpy as np
import pytest
from serving import ServerProcess

from bertnpu_runtime import CrossEncoder

QUERY = "Where does the man play the guitar?"
DOCUMENTS = [
    "A man is playing a guitar on the street.",
    "A chef slices onions in a busy kitchen.",
    "남자가 기타를 치고 있다.",
    "Two dogs run through a field.",
    "The man plays his guitar in the park.",
]
TOO_LONG = "the weather was cold and the river froze " * 20  # past the rerankers' 40 tokens


@pytest.fixture(scope="module")
def reranker(rerankers):
    _, bundle = rerankers["bert-1"]
    process = ServerProcess(bundle, "--model-name", "tiny-reranker")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def expected(rerankers):
    _, bundle = rerankers["bert-1"]
    with CrossEncoder(bundle, backend="onnx") as model:
        return {
            "scores": model.predict([(QUERY, d) for d in DOCUMENTS]),
            "logits": model.predict([(QUERY, d) for d in DOCUMENTS], activation_fn="identity"),
        }


def test_tei_rerank(reranker, expected):
    answer = httpx.post(f"{reranker.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert answer.status_code == 200
    results = answer.json()
    assert [r["index"] for r in results] == np.argsort(-expected["scores"], kind="stable").tolist()
    for result in results:
        assert result["score"] == pytest.approx(float(expected["scores"][result["index"]]), abs=1e-5)
        assert result["text"] == DOCUMENTS[result["index"]]
    raw = httpx.post(f"{reranker.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    assert all("text" not in r for r in raw)
    for result in raw:
        assert result["score"] == pytest.approx(float(expected["logits"][result["index"]]), abs=1e-5)


def test_cohere_style_rerank(reranker, expected):
    body = {
        "model": "tiny-reranker",
        "query": QUERY,
        "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]],
        "top_n": 3,
        "return_documents": True,
    }
    answer = httpx.post(f"{reranker.url}/v1/rerank", json=body)
    assert answer.status_code == 200
    data = answer.json()
    best = np.argsort(-expected["scores"], kind="stable")[:3].tolist()
    assert data["model"] == "tiny-reranker" and [r["index"] for r in data["results"]] == best
    for result in data["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected["scores"][result["index"]]), abs=1e-5)
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    assert data["usage"]["total_tokens"] > len(DOCUMENTS) * 3
    plain = httpx.post(f"{reranker.url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    assert len(plain["results"]) == len(DOCUMENTS) and all("document" not in r for r in plain["results"])


@pytest.mark.parametrize(
    ("route", "body", "status", "field"),
    [
        ("/rerank", {"texts": DOCUMENTS}, 422, "'query' must be a string"),
        ("/rerank", {"query": QUERY, "texts": ["fine", 7]}, 422, r"texts\[1\] must be a string"),
        ("/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": "yes"}, 422, "'raw_scores' must be true"),
        ("/rerank", {"query": QUERY, "texts": ["short", TOO_LONG]}, 413, r"texts\[1\] is longer than"),
        ("/v1/rerank", {"query": QUERY}, 400, "'documents' is required"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, 400, "'top_n' must be a positive"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "model": "other"}, 404, "`other` does not exist"),
        ("/v1/embeddings", {"input": "a text"}, 400, "serves a reranker .*use /rerank or /v1/rerank"),
        ("/embed", {"inputs": "a text"}, 400, "serves a reranker"),
    ],
)
def test_bad_requests_are_named_and_the_server_goes_on(reranker, route, body, status, field):
    answer = httpx.post(f"{reranker.url}{route}", json=body)
    assert answer.status_code == status, answer.text
    assert re.search(field, answer.text), answer.text
    ok = httpx.post(f"{reranker.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS[:2]})
    assert ok.status_code == 200


def test_truncate_accepts_a_long_text(reranker):
    answer = httpx.post(f"{reranker.url}/rerank", json={"query": QUERY, "texts": [TOO_LONG], "truncate": True})
    assert answer.status_code == 200 and len(answer.json()) == 1


def test_truncation_direction_left_cuts_the_long_text_of_a_pair_at_its_start(reranker, rerankers):
    from tokenizers import Tokenizer as HfTokenizer

    from bertnpu_runtime.heads import activate
    from bertnpu_runtime.tokenize import TokenRows

    _, bundle = rerankers["bert-1"]
    document = TOO_LONG + " and at last the man played his guitar"
    with CrossEncoder(bundle, backend="onnx") as model:
        library = HfTokenizer.from_file(str(bundle / "tokenizer.json"))
        library.no_padding()
        library.enable_truncation(max_length=model.max_seq_length, direction="left")
        encoding = library.encode(QUERY, document)
        rows = TokenRows.from_lists([encoding.ids], [True], [encoding.type_ids])
        logits = model.pipeline.encode(rows, 8).vectors
        expected = float(np.ravel(activate(logits, model.activation_fn))[0])
        first_tokens = float(model.predict([(QUERY, document)])[0])
    body = {"query": QUERY, "texts": [document], "truncate": True, "truncation_direction": "left"}
    [result] = httpx.post(f"{reranker.url}/rerank", json=body, timeout=30).json()
    assert result["score"] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - first_tokens) > 1e-4  # the document's end, not its start
    wrong = httpx.post(f"{reranker.url}/rerank", json={**body, "truncation_direction": "both"}, timeout=30)
    assert wrong.status_code == 422 and "truncation_direction" in wrong.text


def test_concurrent_requests_each_get_their_own_scores(reranker, expected):
    """16 clients at once through the shared batcher (whose batching across requests test_serve
    checks with a gated backend): every answer is its own request's, and every pair is counted."""

    def sentences() -> float:
        text = httpx.get(f"{reranker.url}/metrics").text
        return float(re.search(r"^bertnpu_sentences_total (\S+)$", text, re.M)[1])

    before = sentences()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda n: httpx.post(
                    f"{reranker.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS[: 1 + n % 5]}, timeout=60
                ),
                range(16),
            )
        )
    for n, answer in enumerate(answers):
        assert answer.status_code == 200
        got = {r["index"]: r["score"] for r in answer.json()}
        count = 1 + n % 5
        np.testing.assert_allclose([got[i] for i in range(count)], expected["scores"][:count], atol=1e-5)
    assert sentences() - before == sum(1 + n % 5 for n in range(16))


def test_a_multi_label_reranker_is_refused_on_the_rank_routes(rerankers):
    _, bundle = rerankers["bert-3"]
    process = ServerProcess(bundle)
    try:
        answer = httpx.post(f"{process.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS})
        assert answer.status_code == 400 and "one label" in answer.text
    finally:
        process.stop()


def test_an_embedding_bundle_does_not_rerank(tiny_bundle):
    process = ServerProcess(tiny_bundle)
    try:
        for route, body in (
            ("/rerank", {"query": "q", "texts": ["d"]}),
            ("/v1/rerank", {"query": "q", "documents": ["d"]}),
        ):
            answer = httpx.post(f"{process.url}{route}", json=body)
            assert answer.status_code == 400 and "serves an embedding model" in answer.text, answer.text
    finally:
        process.stop()
