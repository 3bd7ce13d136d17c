"""``trained``: a critic trained by ``milr train-critic`` (:mod:`milr.training`), loaded from its folder.

One step from training to use: a recipe names ``{name: trained, path: <checkpoint folder>}`` and
this loads the network described in the folder's ``critic.json`` with the weights next to it; the
critic's card (range, calibration statistics on the validation set, training-data summary) comes
from the same file. Reward models (pairwise Bradley-Terry, after TRL's RewardTrainer and
ImageReward, arXiv 2304.05977; pointwise regression/classification) return their trained output;
contrastive CLIP folders are scored as cosine similarity by the ``clip_score`` critic.

Names instead of paths, with no code:

* shipped critics trained on MiniMUG's world: ``world_pref`` (a preference reward model) and
  ``world_clip`` (a tiny open_clip CLIP), weights in ``milr/critics/weights/`` -- also usable as
  ``{name: trained, path: world_pref}``;
* user names: a YAML file mapping names to checkpoint folders (or to any critic with preset
  arguments), read when ``milr.critics`` is imported. Its location is ``$MILR_CRITICS_FILE``, else
  ``$XDG_CONFIG_HOME/milr/critics.yaml`` (default ``~/.config/milr/critics.yaml``)::

      my-pref: {path: /data/critics/my-pref}            # -> {name: trained, path: ...}
      my-pref-small-batch: {path: /data/critics/my-pref, batch_size: 8}
      big-clip: {name: clip_score, arch: ViT-L-14, pretrained: /weights/vitl14.safetensors}

  Relative paths are relative to the YAML file. A name may not shadow a built-in critic.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from milr.argtypes import PositiveInt
from milr.cards import CriticCard
from milr.critics.shipped import resolve_shipped, shipped, user_config_path
from milr.interfaces import Critic, given_arg
from milr.registry import CRITICS

if TYPE_CHECKING:
    import torch

FORMAT = "milr-trained-critic"
VERSION = "1"  # bump when scoring code changes scores (part of the cache key)
SHIPPED = ("world_pref", "world_clip")


def shipped_checkpoints() -> dict[str, Path]:
    """Trained critics shipped with milr, by name: ``milr/critics/weights/<name>/critic.json``."""
    return shipped(lambda folder: folder if (folder / "critic.json").is_file() else None)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder (holding ``critic.json``), or the name of a shipped one."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file() and p.name == "critic.json":
        p = p.parent
    if p.is_dir():
        if not (p / "critic.json").is_file():
            raise FileNotFoundError(
                f"{p} is not a trained-critic folder (no critic.json); train one with `milr train-critic RECIPE`"
            )
        return p
    return resolve_shipped(str(path), shipped_checkpoints(), "trained critic {name} not found: give a folder written by "
                           "`milr train-critic` or a shipped name ({shipped})")


def read_info(folder: Path) -> dict:
    try:
        info = json.loads((folder / "critic.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / 'critic.json'} is not valid JSON: {e}") from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{folder / 'critic.json'} is not a milr trained-critic file (format {info.get('format')!r})")
    return info


def card_from_info(info: dict, folder: Path) -> CriticCard:
    c = dict(info["card"])
    return CriticCard(
        summary=c.get("summary", ""),
        score_range=tuple(float(x) for x in c.get("score_range", (float("-inf"), float("inf")))),
        higher_is_better=bool(c.get("higher_is_better", True)),
        differentiable=bool(c.get("differentiable", True)),
        input_size=c.get("input_size"),
        max_text_tokens=c.get("max_text_tokens"),
        cost=c.get("cost", "cheap"),
        weights=str(folder),
        reference=c.get("reference", ""),
        extra=c.get("extra", {}),
    )


@CRITICS.register("trained")
class TrainedCritic(Critic):
    """A critic from a ``milr train-critic`` checkpoint folder (or a shipped name); higher is better.

    ``path``: the folder (``critic.json`` + weights) or a shipped name (``world_pref``,
    ``world_clip``). Scores are what the card's ``output`` says: a Bradley-Terry reward (pairwise),
    a probability (pointwise, BCE), a regressed score (pointwise, MSE; a distilled student returns
    its teacher's scale) or a cosine similarity (contrastive CLIP). ``score`` runs without
    gradients unless ``requires_grad``; ``score_differentiable`` keeps the graph to the pixels.
    """

    @classmethod
    def preflight(cls, args: dict) -> None:
        """Resolve the weights the recipe names without loading them (called before any load)."""
        path = given_arg(cls, args, "path")
        if path is not None:
            read_info(resolve_checkpoint(path))  # the folder and its critic.json, not the weights

    def __init__(self, path: str, device: str = "cpu", batch_size: PositiveInt = 256, requires_grad: bool = False):
        import torch

        if int(batch_size) < 1:
            raise ValueError(f"trained: batch_size must be >= 1, got {batch_size}")
        self.folder = resolve_checkpoint(path)
        self.info = read_info(self.folder)
        self.task = self.info["task"]
        self.card = card_from_info(self.info, self.folder)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.requires_grad = bool(requires_grad)
        self.init_args = {"path": str(path)}
        self._fingerprint: Optional[str] = None
        if self.task == "contrastive":
            from milr.critics.clip_score import CLIPScore

            self._clip = CLIPScore(arch=str(self.folder), device=device, batch_size=batch_size, requires_grad=requires_grad)
            self.net = None
            return
        from safetensors.torch import load_file

        from milr.critics.reward_net import RewardNet, output_transform

        cfg = dict(self.info["network"], _restoring=True, _folder=str(self.folder))
        self.net = RewardNet(cfg)
        state = load_file(str(self.folder / self.info.get("weights", "model.safetensors")))
        expected = self.net.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{self.folder}: weights do not match critic.json (missing {missing[:5]}, unexpected {unexpected[:5]})")
        self.net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        self.net.to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.transform, _ = output_transform(
            self.task, self.info.get("loss"), float(self.info.get("target_mean", 0.0)), float(self.info.get("target_std", 1.0))
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> "TrainedCritic":
        """Load a checkpoint folder written by ``milr train-critic`` (or a shipped name), as Hugging Face's
        ``from_pretrained``; ``kwargs``: ``device``, ``batch_size``, ``requires_grad``."""
        return cls(str(path), **kwargs)

    # -- scoring -------------------------------------------------------------------------------
    def _score(self, images: "torch.Tensor", prompts: list[str]) -> "torch.Tensor":
        import torch

        from milr.image_inputs import check_batch

        check_batch(images, prompts, f"trained critic {self.folder.name}")
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i : i + self.batch_size].to(self.device, torch.float32)
            tokens = self.net.tokenize(prompts[i : i + self.batch_size]).to(self.device)
            out.append(self.transform(self.net(x, tokens)))
        return torch.cat(out).to(images.device)

    def score(self, images: "torch.Tensor", prompts: list[str], metadata: Optional[list[dict]] = None) -> "torch.Tensor":
        import torch

        if self.net is None:
            return self._clip.score(images, prompts, metadata)
        if self.requires_grad:
            return self._score(images, prompts)
        with torch.no_grad():
            return self._score(images, prompts)

    def score_differentiable(self, images: "torch.Tensor", prompts: list[str], metadata: Optional[list[dict]] = None) -> "torch.Tensor":
        """Like :meth:`score`, keeping the autograd graph to ``images``."""
        import torch

        if self.net is None:
            return self._clip.score_differentiable(images, prompts, metadata)
        with torch.enable_grad():
            return self._score(images, prompts)

    def identity(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            for f in sorted(self.folder.iterdir()):
                if f.suffix in (".safetensors", ".json"):
                    h.update(f.name.encode() + f.read_bytes())
            self._fingerprint = h.hexdigest()[:16]
        return f"trained:v{VERSION}:{self.folder.name}:w={self._fingerprint}"


# ---------------------------------------------------------------------------------------------
# Shipped critics trained on MiniMUG's world (weights in milr/critics/weights/)
# ---------------------------------------------------------------------------------------------
@CRITICS.register("world_pref")
def world_pref(device: str = "cpu", batch_size: PositiveInt = 256, requires_grad: bool = False) -> TrainedCritic:
    """Preference reward model trained pairwise on MiniMUG world images (follows vs. near miss)."""
    c = TrainedCritic("world_pref", device=device, batch_size=batch_size, requires_grad=requires_grad)
    c.registry_name = "world_pref"
    return c


@CRITICS.register("world_clip")
def world_clip(device: str = "cpu", batch_size: PositiveInt = 256, requires_grad: bool = False) -> TrainedCritic:
    """Tiny open_clip CLIP trained contrastively on MiniMUG world images and prompts (cosine score)."""
    c = TrainedCritic("world_clip", device=device, batch_size=batch_size, requires_grad=requires_grad)
    c.registry_name = "world_clip"
    return c


# ---------------------------------------------------------------------------------------------
# User names from a config file
# ---------------------------------------------------------------------------------------------
_USER_NAMES: set[str] = set()


class _UserCritic:
    """Registry factory for one user entry: builds the target critic with the preset arguments.

    Its signature (for recipe checks) is the target's, computed on first use so that importing
    ``milr.critics`` does not import the target critic's dependencies.
    """

    def __init__(self, user_name: str, entry: dict, base: Path):
        entry = dict(entry)
        if "path" in entry and "name" not in entry:
            self.target, self.preset = "trained", entry
            p = Path(os.path.expanduser(str(entry["path"])))
            if not p.is_absolute() and str(entry["path"]) not in SHIPPED:
                self.preset["path"] = str((base / p).resolve())
        else:
            self.target = str(entry.pop("name"))
            self.preset = entry
        if self.target in _USER_NAMES or self.target == user_name:
            raise ValueError(f"user critic {user_name!r} may not point at another user name ({self.target!r})")
        self.target = CRITICS.resolve_name(self.target)  # fails now, with suggestions, on a typo
        self.user_name = user_name
        self.__name__ = user_name

    def __call__(self, **kwargs: Any) -> Critic:
        critic = CRITICS.build(self.target, **{**self.preset, **kwargs})
        critic.registry_name = self.user_name
        critic.init_args = {**getattr(critic, "init_args", {}), **{k: str(v) for k, v in self.preset.items()}}
        return critic

    @property
    def __signature__(self) -> inspect.Signature:
        sig = inspect.signature(CRITICS.get(self.target))
        params = [p for n, p in sig.parameters.items() if n not in self.preset and n != "model"]
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=v) for n, v in self.preset.items()
                   if n in sig.parameters]
        params.sort(key=lambda p: p.kind)
        return sig.replace(parameters=params)


def register_user_critics(path: str | os.PathLike | None = None, strict: bool | None = None) -> list[str]:
    """Register the names in the user's critics file; returns them.

    With no ``path`` the default location is read (see the module docstring) and problems are
    warnings; with an explicit ``path`` (or ``strict=True``) they raise ``ValueError``.
    """
    strict = path is not None if strict is None else strict
    file = Path(path) if path is not None else user_config_path()
    if not file.is_file():
        if strict:
            raise FileNotFoundError(f"critics file {file} does not exist")
        return []

    def problem(msg: str) -> None:
        if strict:
            raise ValueError(f"{file}: {msg}")
        warnings.warn(f"{file}: {msg}; entry skipped", stacklevel=3)

    from milr.config import RecipeError, read_yaml_file

    try:  # the recipes' limits: an alias bomb here once made `milr list` hang
        data = read_yaml_file(file, "critics file") or {}
    except RecipeError as e:
        problem(e.problem)
        return []
    if not isinstance(data, dict):
        problem("expected a mapping of names to {path: ...} or {name: ..., args}")
        return []
    done = []
    builtin = set(CRITICS.names()) - _USER_NAMES
    for user_name, entry in data.items():
        user_name = str(user_name)
        if not isinstance(entry, dict) or not ("path" in entry or "name" in entry):
            problem(f"{user_name}: expected {{path: <checkpoint folder>}} or {{name: <critic>, ...args}}, got {entry!r}")
            continue
        if user_name in builtin:
            problem(f"{user_name}: is a built-in critic name; choose another name")
            continue
        try:
            make = _UserCritic(user_name, entry, file.parent)
        except Exception as e:  # unknown target critic, bad entry
            problem(f"{user_name}: {e}")
            continue
        card = CriticCard(summary=f"user critic from {file}: {make.target} with {entry}",
                          score_range=(float("-inf"), float("inf")))
        if make.target == "trained":
            try:  # the checkpoint's own card (range, calibration), read without loading weights
                folder = resolve_checkpoint(make.preset["path"])
                own = card_from_info(read_info(folder), folder)
                card = CriticCard(**{**own.as_dict(), "summary": f"{own.summary} (user name from {file})"})
            except (OSError, ValueError, KeyError) as e:
                problem(f"{user_name}: {e}")
                continue
        CRITICS.register(user_name, card=card, override=True)(make)
        _USER_NAMES.add(user_name)
        done.append(user_name)
    return done


__all__ = ["TrainedCritic", "register_user_critics", "resolve_checkpoint", "shipped_checkpoints",
           "world_clip", "world_pref", "user_config_path"]
