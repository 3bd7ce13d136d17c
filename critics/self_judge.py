"""SelfReward: the MUG model under optimisation judges its own images.

Reference: MILR (Mi et al. 2025, arXiv 2509.22761), whose SelfReward has the unified model's
understanding branch judge the image it generated, reusing the weights already loaded for
generation (no second model in memory). MILR's code asks Janus-Pro for a JSON verdict (0 or -1)
after listing objects, colours, positions and counts; this critic asks the same things as yes/no
questions (``milr.critics.questions``: decomposed GenEval clauses or the whole prompt) and reads
``MUGModel.yes_probability``, which gives a soft score in [0, 1] (product or mean over questions)
instead of a parsed pass/fail.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch

from milr.critics.questions import YesNoJudge
from milr.interfaces import MUGModel
from milr.registry import CRITICS


@CRITICS.register("self_judge")
class SelfJudge(YesNoJudge):
    """P(yes) from the MUG model itself, per question, combined per image.

    Args:
        model: the loaded MUG model (the runner passes it because the parameter is named ``model``).
        questions: ``"auto"``, ``"decomposed"`` or ``"prompt"`` (see ``questions.py``).
        combine: ``"product"`` or ``"mean"`` over an image's questions.
        prompt_templates / clause_templates: override question templates.
        batch_size: (image, question) pairs per ``yes_probability`` call.
    """

    def __init__(
        self,
        model: MUGModel,
        questions: Literal["prompt", "decomposed", "auto"] = "auto",
        combine: Literal["product", "mean"] = "product",
        prompt_templates: Mapping[str, str] | None = None,
        clause_templates: Mapping[str, str] | None = None,
        batch_size: int = 16,
    ):
        super().__init__(questions, combine, prompt_templates, clause_templates)
        if model is None or not callable(getattr(model, "yes_probability", None)):
            raise ValueError(
                "self_judge needs the MUG model under optimisation (with yes_probability); "
                f"got {type(model).__name__}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self._config = dict(questions=questions, combine=combine, prompt_templates=sorted(self.prompt_templates.items()),
                            clause_templates=sorted(self.clause_templates.items()))

    def identity(self) -> str:
        m = self.model
        model_id = getattr(m, "registry_name", None) or type(m).__name__
        # The weights themselves, not the card's text: two MiniMUGs of one card but different
        # weights judged alike used to share cache entries (and each other's scores).
        fingerprint = getattr(m, "fingerprint", None)
        weights = fingerprint() if callable(fingerprint) else getattr(getattr(m, "card", None), "weights", "")
        return f"self_judge:{model_id}:{weights}:{sorted(self._config.items())!r}"

    def answer(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(questions), self.batch_size):
                p = self.model.yes_probability(images[i : i + self.batch_size], questions[i : i + self.batch_size])
                out.append(torch.as_tensor(p, dtype=torch.float32).reshape(-1).cpu())
        p_yes = torch.cat(out)
        if ((p_yes < 0) | (p_yes > 1)).any() or torch.isnan(p_yes).any():
            raise RuntimeError(f"{type(self.model).__name__}.yes_probability returned values outside [0, 1]")
        return p_yes
