"""Combination rules of :class:`~milr.critics.ensemble.Ensemble` that resist reward hacking.

A search maximises whatever the critic rewards, so one member that can be fooled (a reward model
giving a huge score to a degenerate image) takes over a weighted sum: the "reward hacking" of
Gao et al., *Scaling Laws for Reward Model Overoptimization* (arXiv 2210.10760). Two remedies
from the reward-model-ensemble literature (Coste et al., *Reward Model Ensembles Help Mitigate
Overoptimization*, arXiv 2310.02743: worst-case and uncertainty-weighted optimisation; Eisenstein
et al., arXiv 2312.09244) are implemented here:

* :func:`lower_confidence_bound` -- ``mode: lcb``: the weighted mean of the normalised members
  minus ``kappa`` times their weighted standard deviation across members (uncertainty-weighted
  optimisation). A score only one member believes in has a large spread and is discounted.
* :class:`AgreementGate` -- ``gate: {k, margin, penalty}``: a candidate counts as better than the
  incumbent only when ``k`` members individually say so (defined precisely in its docstring).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import torch


def lower_confidence_bound(norm: torch.Tensor, weights: torch.Tensor, kappa: float) -> torch.Tensor:
    """``m - kappa * s`` per row, over members with a positive weight.

    ``norm``: normalised member scores ``[M, B]``; ``weights``: ``[B, M]``. With ``p_i = w_i /
    sum_j w_j`` over members with ``w_i > 0``: ``m = sum_i p_i n_i`` and ``s = sqrt(sum_i p_i (n_i -
    m)^2)`` (the population standard deviation; with equal weights the plain mean and ``std(ddof=0)``).
    """
    active = weights > 0
    w = torch.where(active, weights, torch.zeros_like(weights))
    p = w / w.sum(dim=1, keepdim=True)
    x = torch.where(active, norm.T, torch.zeros_like(w))  # inactive members may be NaN (never scored)
    mean = (p * x).sum(dim=1)
    var = (p * (x - mean[:, None]) ** 2).sum(dim=1)
    return mean - kappa * var.clamp(min=0).sqrt()


@dataclass
class _Incumbent:
    members: torch.Tensor  # [M] normalised member scores
    reward: float  # its combined reward


class AgreementGate:
    """Accept a candidate as better than the incumbent only when ``k`` members agree.

    Definition (per prompt; the key is the prompt text plus its metadata). The gate keeps the
    **incumbent**: the best accepted image so far, with its normalised member scores ``u_i`` and
    combined reward ``R``. The first image scored for a prompt is the first incumbent (its reward
    passes unchanged). For every later candidate with member scores ``n_i`` and combined score
    ``c``:

    * member ``i`` **agrees** when it has a non-zero weight ``w_i`` on that prompt and
      ``d_i = sign(w_i) * (n_i - u_i)`` satisfies ``d_i > 0`` and ``d_i >= margin``;
    * if ``c > R``: the candidate is **accepted** when at least ``k`` members agree, and its reward
      is ``c``; otherwise its reward is capped at ``R - penalty`` (``penalty`` defaults to 0), so
      neither best-of-N's argmax nor a REINFORCE advantage prefers it to the incumbent;
    * if ``c <= R`` (or ``c`` is not finite): the reward is ``c`` unchanged (it is not better).

    **Batches.** All candidates of one ``score`` call are compared with the incumbent as it was
    when the call began, never with each other; after the call the accepted candidate with the
    highest ``c`` (if any) becomes the incumbent. In the very first call of a prompt, its first row
    is the incumbent and the other rows are compared with it. Rows of several prompts in one call
    are grouped by key.

    **Searches.** Best-of-N and the runner keep the first of equal rewards, so a capped candidate
    (reward ``R``) never replaces the incumbent. REINFORCE's leave-one-out baseline sees the capped
    reward: a hacked candidate gets ``R``, below every accepted candidate of its batch (each has
    ``c > R``), so the gradient favours those; against candidates that are worse than the
    incumbent it is still favoured as the incumbent itself would be (``penalty > 0`` makes it
    rank below the incumbent level instead).

    **Reset.** The state is dropped for every key absent from a call, so a new prompt starts fresh;
    :meth:`reset` drops it explicitly (call it between two searches on the same prompt).
    """

    def __init__(self, k: int, margin: float = 0.0, penalty: float = 0.0):
        if k < 1:
            raise ValueError(f"gate k must be >= 1, got {k}")
        if margin < 0 or penalty < 0 or not (math.isfinite(margin) and math.isfinite(penalty)):
            raise ValueError(f"gate margin and penalty must be finite and >= 0, got {margin}, {penalty}")
        self.k, self.margin, self.penalty = int(k), float(margin), float(penalty)
        self._state: dict[str, _Incumbent] = {}
        self.last_accepted: Optional[torch.Tensor] = None  # [B] bool: the row's reward is its own c
        self.last_agree: Optional[torch.Tensor] = None  # [B] members agreeing (-1: not compared)

    def reset(self) -> None:
        self._state.clear()

    @staticmethod
    def key(prompt: str, metadata: Optional[dict]) -> str:
        return prompt + "\x00" + json.dumps(metadata or {}, sort_keys=True, default=str)

    def incumbent(self, prompt: str, metadata: Optional[dict] = None) -> Optional[float]:
        """The incumbent's combined reward for a prompt, or None before its first image."""
        inc = self._state.get(self.key(prompt, metadata))
        return None if inc is None else inc.reward

    def apply(self, keys: list[str], norm: torch.Tensor, weights: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Gated rewards ``[B]`` from normalised members ``[M, B]``, weights ``[B, M]``, combined ``[B]``."""
        B = total.numel()
        out = total.clone()
        accepted = torch.zeros(B, dtype=torch.bool)
        agree = torch.full((B,), -1, dtype=torch.long)
        groups: dict[str, list[int]] = {}
        for j, key in enumerate(keys):
            groups.setdefault(key, []).append(j)
        self._state = {k: v for k, v in self._state.items() if k in groups}
        for key, rows in groups.items():
            inc = self._state.get(key)
            if inc is None or not math.isfinite(inc.reward):
                first = next((j for j in rows if math.isfinite(float(total[j]))), rows[0])
                inc = _Incumbent(norm[:, first].clone(), float(total[first]))
                accepted[first] = True
                rows = [j for j in rows if j != first]
            best: Optional[int] = None
            for j in rows:
                c = float(total[j])
                if not (math.isfinite(c) and c > inc.reward):
                    continue
                w = weights[j]
                d = torch.sign(w) * (norm[:, j] - inc.members)
                n_agree = int(((w != 0) & (d > 0) & (d >= self.margin)).sum())
                agree[j] = n_agree
                if n_agree >= self.k:
                    accepted[j] = True
                    if best is None or c > float(total[best]):
                        best = j
                else:
                    out[j] = inc.reward - self.penalty
            if best is not None:
                inc = _Incumbent(norm[:, best].clone(), float(total[best]))
            self._state[key] = inc
        self.last_accepted, self.last_agree = accepted, agree
        return out
