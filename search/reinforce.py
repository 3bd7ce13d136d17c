"""MILR: policy-gradient (REINFORCE) search over a MUG model's last-layer text and image latents.

Reference: Mi et al., "Improving Multimodal Image Generation via Test-Time Latent Reasoning"
(MILR, arXiv 2509.22761) and the authors' released code, as specified in
``docs/milr-method.md`` sections 1.1-1.5; the estimator is LatentSeek's (arXiv 2505.13308).

The latents are the final-normed last-layer hidden states that feed the heads: ``z_t`` for the
first ``floor(text_fraction * M)`` reasoning tokens and ``z_v`` for the first
``floor(image_fraction * N)`` image tokens, each image latent a [cond, uncond] pair scored through
the CFG-fused logits. They start as clones of the states of one ordinary generation (the first
candidate) and are updated with Adam on ``-R * sum log p(token | z)``; gradients reach them
through the heads only. After each update the text prefix is decoded from ``z_t`` and continued
greedily, the image prefix is sampled from ``z_v`` and the remaining image tokens are regenerated
on the new text; the critic scores the image.

Two presets:

* ``faithful`` reproduces the released code: the log-prob token is the argmax of each latent
  (``p = softmax(logits) + 1e-8``, loss ``-R * sum log(p[tok] + 1e-10)``), one sample per step,
  no baseline, ``R`` is the previous image's reward in the code's non-positive convention
  (``R = reward + reward_shift``; for a [0, 1] critic ``reward_shift = -1`` maps "pass" to 0),
  the update for step k happens before step k decodes, and the last image is returned. The code's
  stop rule ("reward > threshold, checked before each step") is ``threshold`` in our
  higher-is-better convention (the code's tau = -0.1 for binary rewards is 0.9 here).
* ``default`` is an on-policy estimator: the log-prob tokens are the sampled tokens that were
  decoded, ``samples`` candidates per step (decoded as one batch) with a leave-one-out baseline,
  advantages normalised by the step's reward spread, and the best image seen is returned.

Modes: ``text`` (only ``z_t``; the image is regenerated from scratch on the new text), ``image``
(only ``z_v``; the plan stays fixed) and ``both``. Schedules for ``both``: ``joint`` (both every
step), ``alternate`` (odd steps text, even steps image) and ``text_then_image`` (text for the
first ``floor(steps / 2)`` steps, image after).

Deviation from the code, for tiny models only: a positive fraction selects at least one latent
(``max(1, floor(fraction * n))``, :func:`milr.search.latent_space.count_latents`), so a 16-token
toy image still has an image latent; for Janus-Pro (576 image tokens) the counts are the code's.
The latents, caches and decoding live in :mod:`milr.search.latent_space`; this module is the
proposal (prefix tokens from the latents) and the update (Adam on the REINFORCE loss).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch

from milr.argtypes import Fraction
from milr.interfaces import Candidate, Search
from milr.registry import SEARCHES
from milr.search.latent_space import LatentSpace, count_latents, sample_tokens

__all__ = ["Reinforce", "count_latents", "faithful_log_prob", "exact_log_prob"]


def faithful_log_prob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The released code's ``log(softmax(logits) + 1e-8)[tok] + 1e-10)``, gathered per position."""
    p = torch.softmax(logits, dim=-1) + 1e-8
    return torch.log(p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) + 1e-10)


def exact_log_prob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@SEARCHES.register("reinforce")
class Reinforce(Search):
    """MILR's REINFORCE over the first text and image latents (``faithful`` or improved ``default``)."""

    _PRESETS: dict[str, dict[str, Any]] = {
        "faithful": dict(samples=1, token_choice="argmax", baseline=False, normalize=False, return_best=False, reward_shift=-1.0),
        "default": dict(samples=4, token_choice="sample", baseline=True, normalize=True, return_best=True, reward_shift=0.0),
    }

    def __init__(
        self,
        preset: Literal["default", "faithful"] = "default",
        mode: Literal["both", "text", "image"] = "both",
        schedule: Literal["joint", "alternate", "text_then_image"] = "joint",
        steps: int = 20,
        lr: float = 0.03,
        text_fraction: Fraction = 0.2,
        image_fraction: Fraction = 0.02,
        threshold: Optional[float] = None,
        samples: Optional[int] = None,
        token_choice: Optional[Literal["argmax", "sample"]] = None,
        baseline: Optional[bool] = None,
        normalize: Optional[bool] = None,
        return_best: Optional[bool] = None,
        reward_shift: Optional[float] = None,
        cfg: Optional[float] = None,
        temperature: Optional[float] = None,
        text_temperature: float = 1.0,
        max_text_tokens: Optional[int] = None,
        grad_clip: Optional[float] = None,
        use_prompt_cache: bool = True,
    ):
        """Hyper-parameters left ``None`` take the preset's value.

        Args:
            preset: ``faithful`` (released code) or ``default`` (sampled tokens, ``samples`` per
                step, leave-one-out baseline, normalised advantages, best image returned).
            mode / schedule: which latents are optimised, and when (see the module docstring).
            steps: optimisation steps after the initial generation (paper: 20).
            lr: Adam learning rate (paper: 0.03; default betas).
            text_fraction / image_fraction: leading fraction of plan / image tokens optimised
                (paper: 0.2 / 0.02).
            threshold: stop once the reward exceeds it (our convention, higher is better);
                ``None`` runs all steps. MILR's code used tau = -0.1 on 0/-1 rewards, i.e. 0.9 here.
            samples: candidates per step, decoded as one batch.
            token_choice: the token in the log-prob: ``argmax`` of each latent (code) or the
                ``sample`` that was decoded (on-policy REINFORCE).
            baseline: leave-one-out baseline over a step's samples (with one sample per step: the
                mean of all earlier rewards); only with ``token_choice="sample"``.
            normalize: divide advantages by the step's reward standard deviation.
            return_best: return the best image seen (else the last one, as the code does).
            reward_shift: added to the reward before it multiplies the log-prob when no baseline
                is used; ``-1.0`` turns a [0, 1] critic into the code's non-positive convention.
            cfg / temperature: image sampling (model defaults if ``None``).
            text_temperature: temperature of sampled plan prefixes (``token_choice="sample"``).
            max_text_tokens: cap on plan length (model default if ``None``).
            grad_clip: optional gradient-norm clip (the code uses none).
            use_prompt_cache: reuse the prompt's KV cache (``False`` recomputes it every call; for
                the speed benchmark).
        """
        if preset not in self._PRESETS:
            raise ValueError(f"preset must be one of {sorted(self._PRESETS)}, got {preset!r}")
        if mode not in ("both", "text", "image"):
            raise ValueError(f"mode must be 'both', 'text' or 'image', got {mode!r}")
        if schedule not in ("joint", "alternate", "text_then_image"):
            raise ValueError(f"schedule must be 'joint', 'alternate' or 'text_then_image', got {schedule!r}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        for name, frac in (("text_fraction", text_fraction), ("image_fraction", image_fraction)):
            if not 0.0 <= frac <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {frac}")
        given = dict(samples=samples, token_choice=token_choice, baseline=baseline, normalize=normalize,
                     return_best=return_best, reward_shift=reward_shift)
        opts = {k: (self._PRESETS[preset][k] if v is None else v) for k, v in given.items()}
        if opts["samples"] < 1:
            raise ValueError(f"samples must be >= 1, got {opts['samples']}")
        if opts["token_choice"] not in ("argmax", "sample"):
            raise ValueError(f"token_choice must be 'argmax' or 'sample', got {opts['token_choice']!r}")
        if text_temperature <= 0:
            raise ValueError(f"text_temperature must be > 0, got {text_temperature}")
        self.preset, self.mode, self.schedule = preset, mode, schedule
        self.steps, self.lr = steps, lr
        self.text_fraction, self.image_fraction = text_fraction, image_fraction
        self.threshold = threshold
        self.samples: int = int(opts["samples"])
        self.token_choice: str = opts["token_choice"]
        self.baseline: bool = bool(opts["baseline"])
        self.normalize: bool = bool(opts["normalize"])
        self.return_best: bool = bool(opts["return_best"])
        self.reward_shift: float = float(opts["reward_shift"])
        self.cfg, self.temperature, self.text_temperature = cfg, temperature, text_temperature
        self.max_text_tokens, self.grad_clip, self.use_prompt_cache = max_text_tokens, grad_clip, use_prompt_cache

    # -- the strategy: proposal and update (the bookkeeping is Search's) -----------------------------
    def _start(self) -> None:
        self.space = LatentSpace(
            self.model, self.task.prompt, self.generator, reasoning=True, cfg=self.cfg,
            temperature=self.temperature, max_text_tokens=self.max_text_tokens, use_prompt_cache=self.use_prompt_cache,
        )
        self.z_text: Optional[torch.nn.Parameter] = None
        self.z_image: Optional[torch.nn.Parameter] = None
        self._opts: dict[str, torch.optim.Adam] = {}
        self._pending: Optional[dict] = None  # what the next update needs: active latents and tokens
        self._history: list[float] = []  # every reward so far (for the one-sample baseline)
        self._last_reward: Optional[float] = None

    def _propose(self) -> list[Candidate]:
        if self.step == 0:
            return [self._initial()]
        if self.step > self.steps:
            return []
        k = self.affordable(self.samples)
        if k == 0:
            return []
        active = self._active(self.step)
        updated: list[str] = []
        if self.token_choice == "argmax":
            # The code's order: step k's update uses the previous image's reward, then decodes.
            updated = self._adam_step(active, self._argmax_objective(active))
        text_prefixes, text_tokens = self._text_prefixes(k, active)
        image_tokens = self._image_prefixes(k)
        plans, tokens, pixels = self.space.decode(k, text_prefixes, image_tokens)
        self._pending = {"active": active, "text": text_tokens, "image": image_tokens, "updated": updated}
        return [
            Candidate(
                image=pixels[i], step=self.step, tokens=tokens[i], text=None if plans is None else plans[i],
                info={"updated": updated, "active": sorted(active)},
            )
            for i in range(k)
        ]

    def _update(self, candidates: list[Candidate], rewards: torch.Tensor) -> dict:
        updated = list(self._pending["updated"]) if self._pending else []
        if self.step > 0 and self.token_choice == "sample" and self.step <= self.steps:
            updated = self._adam_step(self._pending["active"], self._sampled_objective(rewards))
        self._history.extend(float(x) for x in rewards)
        self._last_reward = float(rewards.mean()) if self.token_choice == "argmax" else float(rewards.max())
        return {"updated": updated}

    def _finished(self) -> bool:
        if self.step > self.steps:
            return True
        if self.threshold is not None:
            ref = self._best[1] if self.return_best else self._last[1]
            return ref > self.threshold
        return False

    def best(self) -> tuple[Candidate, float]:
        if self.return_best:
            return super().best()
        if self._last is None:
            raise RuntimeError("best() called before any tell()")
        return self._last

    # -- internals -------------------------------------------------------------------------------
    def _active(self, step: int) -> set[str]:
        if self.mode == "text":
            return {"text"}
        if self.mode == "image":
            return {"image"}
        if self.schedule == "alternate":
            return {"text"} if step % 2 == 1 else {"image"}
        if self.schedule == "text_then_image":
            return {"text"} if step <= self.steps // 2 else {"image"}
        return {"text", "image"}

    def _initial(self) -> Candidate:
        text, img, pixels = self.space.initial()
        dev = self.model.device if hasattr(self.model, "device") else None
        if self.mode in ("text", "both") and text is not None:
            m = count_latents(self.text_fraction, len(text.ids[0]))
            self.z_text = torch.nn.Parameter(text.hidden[0][:m].detach().clone().float().to(dev))
            self._opts["text"] = torch.optim.Adam([self.z_text], lr=self.lr)
        if self.mode in ("image", "both"):
            n = count_latents(self.image_fraction, img.tokens.shape[1])
            self.z_image = torch.nn.Parameter(img.hidden[0, :n].detach().clone().float().to(dev))
            self._opts["image"] = torch.optim.Adam([self.z_image], lr=self.lr)
        self._initial_text_ids = None if text is None else text.ids[0]
        self._initial_image_tokens = img.tokens[0]
        self._pending = None
        return Candidate(
            image=pixels[0], step=0, tokens=img.tokens[0], text=None if text is None else text.texts[0],
            info={"initial": True, "text_latents": 0 if self.z_text is None else int(self.z_text.shape[0]),
                  "image_latents": 0 if self.z_image is None else int(self.z_image.shape[0])},
        )

    def _text_logits(self) -> torch.Tensor:
        return self.model.text_head(self.z_text.to(self.model.dtype)).float()

    def _image_logits(self) -> torch.Tensor:
        return self.model.image_logits(self.z_image.to(self.model.dtype), self.space.cfg).float() / self.space.temperature

    def _text_prefixes(self, k: int, active: set[str]) -> tuple[Optional[list[torch.Tensor]], Optional[torch.Tensor]]:
        """Plan prefixes for ``k`` rows, and the sampled tokens (for the on-policy update) if any."""
        if self.mode == "image" or self.z_text is None or self.z_text.shape[0] == 0:
            return None, None
        with torch.no_grad():
            logits = self._text_logits()
            if self.token_choice == "sample" and "text" in active:
                toks = sample_tokens(logits / self.text_temperature, self.generator, k)
            else:
                toks = logits.argmax(-1).unsqueeze(0).expand(k, -1)
                toks = toks.contiguous()
        return [t.cpu() for t in toks], (toks if self.token_choice == "sample" and "text" in active else None)

    def _image_prefixes(self, k: int) -> Optional[torch.Tensor]:
        # The code samples the prefix (T, CFG) from the image latents in every mode that has them;
        # in text mode the image is regenerated from scratch.
        if self.mode == "text" or self.z_image is None or self.z_image.shape[0] == 0:
            return None
        with torch.no_grad():
            return sample_tokens(self._image_logits(), self.generator, k)

    def _argmax_objective(self, active: set[str]):
        """Loss of the code: ``-R * sum log p(argmax)`` with R the last reward, shifted."""
        R = (self._last_reward if self._last_reward is not None else 0.0) + self.reward_shift

        def loss(kind: str) -> torch.Tensor:
            logits = self._text_logits() if kind == "text" else self._image_logits()
            tok = logits.detach().argmax(-1)
            return -R * faithful_log_prob(logits, tok).sum()

        return loss

    def _sampled_objective(self, rewards: torch.Tensor):
        """On-policy loss ``-mean_k A_k * sum log p(tok_k)`` over the step's samples."""
        k = rewards.numel()
        if self.baseline and k > 1:
            adv = rewards - (rewards.sum() - rewards) / (k - 1)
        elif self.baseline:
            prev = self._history or [0.0]
            adv = rewards - sum(prev) / len(prev)
        else:
            adv = rewards + self.reward_shift
        if self.normalize and k > 1:
            std = rewards.std(unbiased=False)
            adv = adv / std if std > 1e-8 else torch.zeros_like(adv)
        pending = self._pending

        def loss(kind: str) -> Optional[torch.Tensor]:
            toks = pending["text"] if kind == "text" else pending["image"]
            if toks is None:
                return None
            logits = self._text_logits() / self.text_temperature if kind == "text" else self._image_logits()
            lp = exact_log_prob(logits.unsqueeze(0).expand(k, -1, -1), toks[:k].to(logits.device)).sum(-1)
            return -(adv.to(lp.device) * lp).mean()

        return loss if bool((adv != 0).any()) else None

    def _adam_step(self, active: set[str], objective) -> list[str]:
        """One Adam step on each active latent; gradients only through the heads."""
        if objective is None:
            return []
        done = []
        for kind in ("text", "image"):
            z = self.z_text if kind == "text" else self.z_image
            if kind not in active or z is None or z.shape[0] == 0:
                continue
            with torch.enable_grad():
                loss = objective(kind)
                if loss is None:
                    continue
                (grad,) = torch.autograd.grad(loss, [z])  # leaves the model's weights untouched
            if self.grad_clip is not None:
                norm = grad.norm()
                if norm > self.grad_clip:
                    grad = grad * (self.grad_clip / norm)
            z.grad = grad
            self._opts[kind].step()
            z.grad = None
            done.append(kind)
        return done
