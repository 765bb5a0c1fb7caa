"""The runtime must work with torch and transformers absent (and never reach for the network)."""

import subprocess
import sys
import textwrap


def test_encode_with_torch_and_transformers_blocked(tiny_bundle):
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "sentence_transformers", "compile", "requests", "huggingface_hub"):
                    raise ImportError("blocked in this test: " + name)
        sys.meta_path.insert(0, Block())
        from bertnpu_runtime import SentenceEncoder
        with SentenceEncoder({str(tiny_bundle)!r}) as enc:
            vectors = enc.encode(["runs without torch", "and without transformers"])
        assert vectors.shape == (2, enc.dim), vectors.shape
        print("ok", enc.backend)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok onnx"
