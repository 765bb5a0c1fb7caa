"""The request bodies of the OpenAI embeddings route, TEI's /embed and /rerank, and the
Cohere/Jina-style /v1/rerank, parsed and checked: any problem is a RequestError naming the field
(and the index in `input`), never an exception from deep inside the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ENCODING_FORMATS = ("float", "base64")
TOKEN_IDS_HINT = (
    "holds token ids; bertnpu tokenizes text itself, with the model's own vocabulary, so ids from "
    "another tokenizer would give wrong vectors. Send the texts as strings (LangChain: "
    "OpenAIEmbeddings(..., check_embedding_ctx_length=False))"
)


class RequestError(Exception):
    """A request the server refuses: the HTTP status, a message, and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class EmbeddingsRequest:
    """POST /v1/embeddings, OpenAI's shape."""

    texts: list[str]
    model: str | None
    encoding_format: str
    dimensions: int | None


@dataclass(frozen=True)
class EmbedRequest:
    """POST /embed, TEI's shape."""

    texts: list[str]
    normalize: bool
    truncate: bool
    dimensions: int | None
    prompt_name: str | None = None
    truncation_direction: str = "right"  # "left": a long text keeps its last tokens


@dataclass(frozen=True)
class RerankRequest:
    """POST /rerank (TEI: query, texts) or /v1/rerank (Cohere, Jina, infinity: query, documents)."""

    query: str
    documents: list[str]
    model: str | None = None
    top_n: int | None = None  # /v1/rerank: the best this many (None: all)
    return_documents: bool = False
    raw_scores: bool = False  # TEI: the logits, without the model's activation
    truncate: bool = False
    truncation_direction: str = "right"  # TEI: "left" cuts the longer text of a pair at its start


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RequestError(400, f"the request body must be a JSON object, found {type(data).__name__}")
    return data


def parse_embeddings_request(body: bytes, dim: int, max_texts: int) -> EmbeddingsRequest:
    data = parse_json_object(body)
    if "input" not in data:
        raise RequestError(400, "'input' is required: a string or a list of strings", "input")
    texts = _texts(data["input"], "input", max_texts)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"'model' must be a string, found {_kind(model)}", "model")
    encoding_format = data.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise RequestError(
            400, f"'encoding_format' must be 'float' or 'base64', found {encoding_format!r:.40}", "encoding_format"
        )
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError(400, f"'user' must be a string, found {_kind(user)}", "user")
    return EmbeddingsRequest(texts, model, encoding_format, _dimensions(data.get("dimensions"), dim))


def parse_embed_request(data: dict[str, Any], dim: int, max_texts: int) -> EmbedRequest:
    """TEI's /embed, from its body parsed by parse_json_object (POST / looks at it first)."""
    if "inputs" not in data:
        raise RequestError(422, "'inputs' is required: a string or a list of strings", "inputs")
    texts = _texts(data["inputs"], "inputs", max_texts, status=422)
    flags = _flags(data, {"normalize": True, "truncate": False}, status=422)
    return EmbedRequest(
        texts,
        flags["normalize"],
        flags["truncate"],
        _dimensions(data.get("dimensions"), dim, status=422),
        prompt_name(data),
        truncation_direction(data),
    )


def prompt_name(data: dict[str, Any]) -> str | None:
    """TEI's prompt_name: a string or absent; whether the model has it is the handler's check."""
    name = data.get("prompt_name")
    if name is not None and not isinstance(name, str):
        raise RequestError(422, f"'prompt_name' must be a string, found {_kind(name)}", "prompt_name")
    return name


def truncation_direction(data: dict[str, Any]) -> str:
    """TEI's truncation_direction, "right" (a long text keeps its first tokens, the default) or
    "left" (its last), in any case, as TEI's enum takes "Right" and "Left"."""
    direction = data.get("truncation_direction", "right")
    if not isinstance(direction, str) or direction.lower() not in ("right", "left"):
        raise RequestError(
            422, f'\'truncation_direction\' must be "right" or "left", found {direction!r:.20}', "truncation_direction"
        )
    return direction.lower()


def parse_tei_rerank_request(body: bytes, max_texts: int) -> RerankRequest:
    """TEI's /rerank: {query, texts, raw_scores, return_text, truncate, truncation_direction}; problems
    are 422, as TEI's."""
    data = parse_json_object(body)
    query = _query(data, status=422)
    if "texts" not in data:
        raise RequestError(422, "'texts' is required: a list of strings", "texts")
    documents = _texts(data["texts"], "texts", max_texts, status=422)
    flags = _flags(data, {"raw_scores": False, "return_text": False, "truncate": False}, status=422)
    return RerankRequest(
        query,
        documents,
        return_documents=flags["return_text"],
        raw_scores=flags["raw_scores"],
        truncate=flags["truncate"],
        truncation_direction=truncation_direction(data),
    )


def parse_rerank_request(body: bytes, max_texts: int) -> RerankRequest:
    """/v1/rerank (Cohere, Jina, infinity): {model, query, documents, top_n, return_documents};
    a document is a string or {"text": string}."""
    data = parse_json_object(body)
    query = _query(data, status=400)
    if "documents" not in data:
        raise RequestError(400, "'documents' is required: a list of strings", "documents")
    documents = data["documents"]
    if isinstance(documents, list):  # Cohere also takes {"text": ...} objects
        documents = [d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d for d in documents]
    documents = _texts(documents, "documents", max_texts)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"'model' must be a string, found {_kind(model)}", "model")
    top_n = data.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise RequestError(400, f"'top_n' must be a positive integer, found {top_n!r:.40}", "top_n")
    flags = _flags(data, {"return_documents": False}, status=400)
    return RerankRequest(query, documents, model, top_n, flags["return_documents"])


@dataclass(frozen=True)
class TokenizeRequest:
    """POST /tokenize (TEI)."""

    texts: list[str]
    add_special_tokens: bool


@dataclass(frozen=True)
class DecodeRequest:
    """POST /decode (TEI)."""

    ids: list[list[int]]
    skip_special_tokens: bool


@dataclass(frozen=True)
class SimilarityRequest:
    """POST /similarity (TEI): one source sentence against sentences."""

    source: str
    sentences: list[str]
    truncate: bool
    prompt_name: str | None = None
    truncation_direction: str = "right"


def parse_tokenize_request(body: bytes, max_texts: int) -> TokenizeRequest:
    data = parse_json_object(body)
    if "inputs" not in data:
        raise RequestError(422, "'inputs' is required: a string or a list of strings", "inputs")
    texts = _texts(data["inputs"], "inputs", max_texts, status=422)
    return TokenizeRequest(texts, _flags(data, {"add_special_tokens": True}, status=422)["add_special_tokens"])


def parse_decode_request(body: bytes, max_texts: int) -> DecodeRequest:
    data = parse_json_object(body)
    ids = data.get("ids")
    if isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        ids = [ids]
    if not isinstance(ids, list) or not ids or not all(isinstance(row, list) for row in ids):
        raise RequestError(422, "'ids' must be a list of token ids, or a list of such lists", "ids")
    if len(ids) > max_texts:
        raise RequestError(413, f"'ids' has {len(ids)} lists, more than this server's limit of {max_texts}", "ids")
    for index, row in enumerate(ids):
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in row):
            raise RequestError(422, f"ids[{index}] must hold non-negative integers", f"ids[{index}]")
    return DecodeRequest(ids, _flags(data, {"skip_special_tokens": True}, status=422)["skip_special_tokens"])


def parse_similarity_request(data: dict[str, Any], max_texts: int) -> SimilarityRequest:
    """TEI's /similarity, from its body parsed by parse_json_object (POST / looks at it first)."""
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        raise RequestError(
            422, f"'inputs' must be an object with source_sentence and sentences, found {_kind(inputs)}", "inputs"
        )
    source = inputs.get("source_sentence")
    if not isinstance(source, str):
        raise RequestError(
            422, f"inputs.source_sentence must be a string, found {_kind(source)}", "inputs.source_sentence"
        )
    if "sentences" not in inputs:
        raise RequestError(422, "inputs.sentences is required: a list of strings", "inputs.sentences")
    sentences = _texts(inputs["sentences"], "inputs.sentences", max_texts, status=422)
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(422, f"'parameters' must be an object, found {_kind(parameters)}", "parameters")
    truncate = _flags(parameters, {"truncate": False}, status=422)["truncate"]
    return SimilarityRequest(source, sentences, truncate, prompt_name(parameters), truncation_direction(parameters))


def _query(data: dict[str, Any], status: int) -> str:
    query = data.get("query")
    if not isinstance(query, str):
        raise RequestError(status, f"'query' must be a string, found {_kind(query)}", "query")
    return query


def _flags(data: dict[str, Any], defaults: dict[str, bool], status: int) -> dict[str, bool]:
    """Boolean fields with their defaults (null counts as absent)."""
    flags = {}
    for name, default in defaults.items():
        value = data.get(name, default)
        if value is None:
            value = default
        if not isinstance(value, bool):
            raise RequestError(status, f"'{name}' must be true or false, found {_kind(value)}", name)
        flags[name] = value
    return flags


def _texts(value: Any, field: str, max_texts: int, status: int = 400) -> list[str]:
    """A string or a list of strings, as a list; token-id arrays are refused, saying why."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise RequestError(status, f"'{field}' must be a string or a list of strings, found {_kind(value)}", field)
    if not value:
        raise RequestError(status, f"'{field}' must not be an empty list", field)
    if len(value) > max_texts:
        raise RequestError(
            413, f"'{field}' has {len(value)} texts, more than this server's limit of {max_texts} per request", field
        )
    if _is_token_ids(value) or all(isinstance(item, list) and item and _is_token_ids(item) for item in value):
        raise RequestError(status, f"'{field}' {TOKEN_IDS_HINT}", field, "token_ids_not_supported")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(status, f"{field}[{index}] must be a string, found {_kind(item)}", f"{field}[{index}]")
    return value


def non_blank(texts: list[str], field: str) -> list[str]:
    """The texts, or a 400 naming the first that is empty or only whitespace (TEI and OpenAI refuse
    those too: they carry nothing to embed)."""
    for index, text in enumerate(texts):
        if not text.strip():
            name = field if len(texts) == 1 and index == 0 else f"{field}[{index}]"
            raise RequestError(400, f"{name} is empty or only whitespace", name, "empty_input")
    return texts


def _is_token_ids(items: list[Any]) -> bool:
    return all(isinstance(item, int) and not isinstance(item, bool) for item in items)


def _dimensions(value: Any, dim: int, status: int = 400) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(status, f"'dimensions' must be an integer, found {_kind(value)}", "dimensions")
    if not 1 <= value <= dim:
        raise RequestError(
            status, f"'dimensions' must be between 1 and {dim}, this model's size, found {value}", "dimensions"
        )
    return value


def _kind(value: Any) -> str:
    """How a JSON value is named in messages: null, a boolean, a number, an object..."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)
