"""What differs between model families and tasks on the host, as data read from bundle.json.

The encoder layers of BERT, RoBERTa, XLM-RoBERTa, CamemBERT and MPNet take the same input, the
embedding output, so the NPU and ONNX half is one. What differs is host work:
- position ids: a sentence's first token has position 0 in BERT, padding_idx + 1 in the RoBERTa
  family and MPNet (transformers' create_position_ids_from_input_ids). Padding tokens get
  padding_idx there instead; their outputs are never read, so right-padded rows need no special
  case: `position_offset` is all the embedding stage needs.
- token types: BERT marks a pair's second text with type 1 (the tokenizer's template says so);
  the RoBERTa family has one type; MPNet has no token-type table (compile writes a zero row).
- the task: "embed" (pooling, as sentence-transformers' SentenceTransformer) or "rerank" (a
  classification head over the first token, as its CrossEncoder; see heads.py).
"""

from __future__ import annotations

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet")
TASKS = ("embed", "rerank")
# Families whose NPU graph Mobilint's own tutorial has compiled and run on a card.
RUN_ON_A_CARD = ("bert",)
