"""The packaged toxicity classifiers, each giving P(toxic) and a reward (docs/architecture.md,
"Packaged models and data").

The reward is the logit of the not-toxic class, log(p_ok / (1 − p_ok)): higher is cleaner,
unbounded both ways, and zero where the classifier cannot tell. Both score the completion
alone: the prompt may be toxic itself (RealToxicityPrompts are chosen to be), and it is the
model's words that are judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.packages import package_dir

_EPS = 1e-6  # keeps the logit finite where a classifier is certain


def not_toxic_logit(p_toxic: np.ndarray) -> torch.Tensor:
    p_ok = np.clip(1.0 - np.asarray(p_toxic, dtype=np.float64), _EPS, 1 - _EPS)
    return torch.tensor(np.log(p_ok / (1 - p_ok)), dtype=torch.float32)


class ToxicityScorer:
    """Base of the packaged scorers: subclasses give `toxicity(texts) -> P(toxic)`."""

    name = "scorer"

    def toxicity(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return not_toxic_logit(self.toxicity(completions))


class ProfanityScorer(ToxicityScorer):
    """alt-profanity-check: a calibrated linear model on TF-IDF features."""

    name = "scorer:profanity"

    @cached_property
    def _model(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn version notes on unpickling
            from profanity_check import profanity_check

        return profanity_check

    def toxicity(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return np.asarray(self._model.predict_prob(list(texts)), dtype=np.float64)


class HateSonarScorer(ToxicityScorer):
    """hatesonar: ONNX TF-IDF + logistic regression over hate speech / offensive / neither;
    P(toxic) = 1 − P(neither).

    As shipped it asks the ONNX StringNormalizer for the en_US.UTF-8 locale, which minimal
    systems lack; the model is patched in memory to use C.UTF-8 (lower-casing ASCII text the
    same way)."""

    name = "scorer:hatesonar"
    NEITHER = 2

    @cached_property
    def _session(self):
        import onnx
        import onnxruntime as ort

        model = onnx.load(package_dir("hatesonar") / "model" / "model.onnx")
        for node in model.graph.node:
            if node.op_type == "StringNormalizer":
                for attribute in list(node.attribute):
                    if attribute.name == "locale":
                        node.attribute.remove(attribute)
                node.attribute.append(onnx.helper.make_attribute("locale", "C.UTF-8"))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def class_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """[n, 3]: hate_speech, offensive_language, neither."""
        if not len(texts):
            return np.zeros((0, 3))
        _, probabilities = self._session.run(None, {"text": np.array(list(texts), dtype=object)})
        return np.array([[p[k] for k in range(3)] for p in probabilities], dtype=np.float64)

    def toxicity(self, texts: Sequence[str]) -> np.ndarray:
        return 1.0 - self.class_probabilities(texts)[:, self.NEITHER]


SCORERS = {"profanity": ProfanityScorer, "hatesonar": HateSonarScorer}


def load_scorer(name: str) -> ToxicityScorer:
    if name not in SCORERS:
        raise RlhfkitError(f"unknown scorer '{name}'; scorers: {', '.join(SCORERS)}")
    return SCORERS[name]()
