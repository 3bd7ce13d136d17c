"""CMA-ES over the same latents as MILR: a black-box baseline for the policy gradient.

Reference: Hansen, "The CMA Evolution Strategy: A Tutorial" (arXiv 1604.00772), through pycma's
``cma.CMAEvolutionStrategy`` ask/tell interface. The search space is MILR's (arXiv 2509.22761,
see ``search/reinforce.py``): the last-layer states of the first ``text_fraction`` plan tokens and
the first ``image_fraction`` image tokens ([cond, uncond] pairs), taken from one ordinary
generation. CMA-ES optimises a perturbation ``x`` of those latents, measured in units of their
root-mean-square value (``z = z0 + rms(z0) * x``, ``x0 = 0``, step size ``sigma``). Each solution
is decoded like a MILR step: plan-prefix tokens and image-prefix tokens are read from the heads
(``argmax``, or sampled with ``token_choice="sample"``), the plan is continued greedily and the
remaining image tokens are sampled on it. A population is decoded as one batch.

``diagonal=True`` (default) runs separable CMA-ES (pycma ``CMA_diagonal``: a diagonal covariance,
linear time and memory in the dimension), which is what makes a 7B model's ~90,000 image-latent
numbers tractable. ``popsize=None`` takes the population from the budget: enough evaluations for
``generations`` generations within the ledger's critic-call or generator-token cap (at the
measured cost of one candidate), clipped to [4, pycma's default 4 + 3 ln n]; without a cap,
pycma's default. pycma minimises, so the fitness is ``-reward``. pycma draws from numpy's global
generator, seeded from ``seed`` (drawn from the task's torch generator); each search keeps that
generator's state as its own and swaps it in around pycma's calls, so searches of several prompts
interleaved in one batch (``run.batch_prompts``) draw exactly what they draw alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Literal, Optional

import numpy as np
import torch

from milr.argtypes import Fraction, PositiveInt
from milr.interfaces import Candidate, Search
from milr.registry import SEARCHES
from milr.search.latent_space import LatentSpace, count_latents, sample_tokens


@SEARCHES.register("cma_es")
class CMAES(Search):
    """Separable (or full) CMA-ES over MILR's text and image latents."""

    def __init__(
        self,
        mode: Literal["both", "text", "image"] = "both",
        text_fraction: Fraction = 0.2,
        image_fraction: Fraction = 0.02,
        sigma: float = 0.3,
        popsize: Optional[int] = None,
        generations: PositiveInt = 10,
        diagonal: bool = True,
        token_choice: Literal["argmax", "sample"] = "argmax",
        threshold: Optional[float] = None,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        max_text_tokens: Optional[int] = None,
    ):
        """Args:
            mode: which latents are searched (``both``, ``text`` or ``image``).
            text_fraction / image_fraction: as in ``reinforce`` (paper: 0.2 / 0.02).
            sigma: initial step size, in units of the latents' RMS.
            popsize: candidates per generation; ``None`` derives it from the budget.
            generations: generations to run (fewer if the budget ends first).
            diagonal: separable CMA-ES (diagonal covariance); ``False`` is full CMA (small dims only).
            token_choice: how prefix tokens are read from the perturbed latents.
            threshold: stop once the best reward exceeds it.
            cfg / temperature / max_text_tokens: decoding (model defaults if ``None``).
        """
        if mode not in ("both", "text", "image"):
            raise ValueError(f"mode must be 'both', 'text' or 'image', got {mode!r}")
        for name, frac in (("text_fraction", text_fraction), ("image_fraction", image_fraction)):
            if not 0.0 <= frac <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {frac}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if popsize is not None and popsize < 2:
            raise ValueError(f"popsize must be >= 2, got {popsize}")
        if generations < 1:
            raise ValueError(f"generations must be >= 1, got {generations}")
        if token_choice not in ("argmax", "sample"):
            raise ValueError(f"token_choice must be 'argmax' or 'sample', got {token_choice!r}")
        self.mode, self.text_fraction, self.image_fraction = mode, text_fraction, image_fraction
        self.sigma, self.popsize, self.generations, self.diagonal = sigma, popsize, generations, diagonal
        self.token_choice, self.threshold = token_choice, threshold
        self.cfg, self.temperature, self.max_text_tokens = cfg, temperature, max_text_tokens

    def _start(self) -> None:
        self.space = LatentSpace(self.model, self.task.prompt, self.generator, reasoning=True, cfg=self.cfg,
                                 temperature=self.temperature, max_text_tokens=self.max_text_tokens)
        self.es = None
        self.generation = 0
        self._asked: Optional[list[np.ndarray]] = None
        self._np_state: Optional[tuple] = None  # numpy's global generator as this search left it

    # -- latents <-> vector ---------------------------------------------------------------------
    def _init_latents(self, text, img) -> None:
        parts = []
        self.z_text0 = self.z_image0 = None
        if self.mode in ("text", "both") and text is not None:
            m = count_latents(self.text_fraction, len(text.ids[0]))
            if m:
                self.z_text0 = text.hidden[0][:m].detach().float().cpu()
                parts.append(self.z_text0.reshape(-1))
        if self.mode in ("image", "both"):
            n = count_latents(self.image_fraction, img.tokens.shape[1])
            if n:
                self.z_image0 = img.hidden[0, :n].detach().float().cpu()
                parts.append(self.z_image0.reshape(-1))
        if not parts:
            raise ValueError("no latents to search: the fractions select no text or image positions")
        flat = torch.cat(parts)
        self.dim = flat.numel()
        self.scale = float(flat.pow(2).mean().sqrt()) or 1.0

    def _split(self, x: np.ndarray) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        dx = torch.as_tensor(np.asarray(x), dtype=torch.float32) * self.scale
        zt = zv = None
        i = 0
        if self.z_text0 is not None:
            n = self.z_text0.numel()
            zt = self.z_text0 + dx[i:i + n].view_as(self.z_text0)
            i += n
        if self.z_image0 is not None:
            zv = self.z_image0 + dx[i:i + self.z_image0.numel()].view_as(self.z_image0)
        return zt, zv

    def _tokens(self, logits: torch.Tensor) -> torch.Tensor:
        if self.token_choice == "argmax":
            return logits.argmax(-1)
        return sample_tokens(logits, self.generator, 1)[0]

    # -- numpy's global generator, per search --------------------------------------------------------
    @contextmanager
    def _own_numpy_generator(self):
        outside = np.random.get_state()
        if self._np_state is not None:
            np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(outside)

    # -- the strategy: proposal and update ---------------------------------------------------------
    def _start_es(self, popsize: int) -> None:
        import cma

        seed = int(torch.randint(1, 2**31 - 1, (1,), generator=self.generator, device=self.generator.device))
        opts = {"popsize": popsize, "seed": seed, "verbose": -9, "CMA_diagonal": bool(self.diagonal)}
        with self._own_numpy_generator():
            self.es = cma.CMAEvolutionStrategy(np.zeros(self.dim), self.sigma, opts)

    def _derive_popsize(self) -> int:
        default = 4 + int(3 * math.log(self.dim))
        b = self.ledger.budget
        evals = []
        if b.critic_calls is not None:
            evals.append(b.critic_calls - self.ledger.critic_calls)
        if self.token_room() is not None:
            evals.append(self.token_room())
        if not evals:
            return default
        return int(min(default, max(4, min(evals) // self.generations)))

    def _propose(self) -> list[Candidate]:
        model = self.model
        if self.step == 0:
            text, img, pixels = self.space.initial()
            self._init_latents(text, img)
            return [Candidate(image=pixels[0], step=0, tokens=img.tokens[0],
                              text=None if text is None else text.texts[0], info={"initial": True, "dim": self.dim})]
        if self.es is None:
            self._start_es(self.popsize or self._derive_popsize())
        if self.generation >= self.generations:
            return []
        with self._own_numpy_generator():
            xs = self.es.ask()
        k = self.affordable(len(xs))
        if k < 2:  # pycma cannot learn from fewer than two solutions
            return []
        xs = xs[:k]
        text_prefixes, image_prefixes = [], []
        with torch.no_grad():
            for x in xs:
                zt, zv = self._split(x)
                if zt is not None:
                    text_prefixes.append(self._tokens(model.text_head(zt.to(model.device, model.dtype)).float()).cpu())
                if zv is not None:
                    logits = model.image_logits(zv.to(model.device, model.dtype), self.space.cfg).float() / self.space.temperature
                    image_prefixes.append(self._tokens(logits).cpu())
        plans, tokens, pixels = self.space.decode(
            k, text_prefixes or None, torch.stack(image_prefixes) if image_prefixes else None)
        self._asked = xs
        return [Candidate(image=pixels[i], step=self.generation + 1, tokens=tokens[i],
                          text=None if plans is None else plans[i], info={"generation": self.generation + 1})
                for i in range(k)]

    def _update(self, candidates: list[Candidate], rewards: torch.Tensor) -> dict:
        if self._asked is None:
            return {}
        with self._own_numpy_generator():
            self.es.tell(self._asked, [-float(x) for x in rewards])
        self._asked = None
        self.generation += 1
        return {"sigma": float(self.es.sigma)}

    def _finished(self) -> bool:
        if self.threshold is not None and self._best[1] > self.threshold:
            return True
        if self.affordable(2) < 2:
            return True
        return self.generation >= self.generations
