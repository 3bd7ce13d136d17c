"""``milr.create_critic(name_or_path, **kwargs)``: a critic in one line, as pyiqa's ``create_metric``.

pyiqa (Chen et al., github.com/chaofengc/IQA-PyTorch) builds any metric by name with
``pyiqa.create_metric(name, as_loss=False, device=...)``; this is the same for critics, through the
same registry, argument validation (:func:`milr.recipe.validate_component_args`) and builder
(:func:`milr.runner.build_critic`) a recipe uses, so a critic made here scores exactly as it does in
a run. ``name_or_path`` is a registered name (``clip_score``, ``world_pref``, a user name from
``critics.yaml``) or a folder written by ``milr train-critic``. ``as_loss=True`` keeps the autograd
graph to the pixels (differentiable critics only): ``(-critic.score(x, prompts)).mean().backward()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from milr.errors import UserError
from milr.interfaces import Critic


def _spec(name_or_path: Union[str, Path], kwargs: dict) -> dict:
    from milr.registry import CRITICS

    ref = str(name_or_path)
    p = Path(ref).expanduser()
    if ref not in CRITICS and ((p / "critic.json").is_file() or (p.name == "critic.json" and p.is_file())):
        return {"name": "trained", "path": ref, **kwargs}
    return {"name": ref, **kwargs}


def create_critic(name_or_path: Union[str, Path], *, device: str = "cpu", as_loss: bool = False, model: Any = None,
                  dtype: Optional[str] = None, **kwargs: Any) -> Critic:
    """Build a critic by registered name or trained-critic folder, with its arguments as keywords.

    ``device``: ``cpu``, ``cuda``, ``auto``...; ``model``: the loaded MUG model for critics that judge
    with it (``self_judge``); ``as_loss``: scores keep gradients (``requires_grad=True``), refused for
    critics whose card says they are not differentiable. Errors are :class:`milr.errors.UserError`
    (unknown name with did-you-mean, unknown or ill-typed argument).
    """
    import milr.critics  # noqa: F401  (the index of built-in critics and the user's names)
    from milr.recipe import CriticSpec, RecipeErrors, validate_component_args
    from milr.registry import CRITICS
    from milr.runner import build_critic, resolve_device

    data = _spec(name_or_path, kwargs)
    if as_loss:
        card = CRITICS.card(CRITICS.resolve_name(data["name"]))
        if card is not None and not card.differentiable:
            raise UserError(f"critic {data['name']!r} is not differentiable (its card says so): it cannot be used as_loss")
        data["requires_grad"] = True
    spec = CriticSpec.model_validate(data)
    errors = validate_component_args(CRITICS, spec, "critic", None)
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    critic = build_critic(spec, model, resolve_device(device), dtype=dtype)
    if critic.registry_name is None:
        critic.registry_name = CRITICS.resolve_name(spec.name)
    return critic


__all__ = ["create_critic"]
