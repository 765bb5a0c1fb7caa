"""The runtime must work with torch and transformers absent (and never reach for the network)."""

from conftest import run_with_imports_blocked


def test_encode_with_torch_and_transformers_blocked(tiny_bundle):
    blocked = ("torch", "transformers", "sentence_transformers", "compile", "requests", "huggingface_hub")
    printed = run_with_imports_blocked(
        blocked,
        f"""
        from bertnpu_runtime import SentenceEncoder
        with SentenceEncoder({str(tiny_bundle)!r}) as enc:
            vectors = enc.encode(["runs without torch", "and without transformers"])
        assert vectors.shape == (2, enc.dim), vectors.shape
        print("ok", enc.backend)
        """,
    )
    assert printed.strip() == "ok onnx"
