"""``milr train-critic RECIPE [key=value ...] [--resume]``: train a critic and write its folder.

The entry point of critic training, after TRL's config + trainer split: the recipe
(:mod:`milr.training.config`) is validated first, loggers are checked, world data is written
when the recipe asks for it (``data.generate``), then the task's trainer runs --
:mod:`~milr.training.reward` (pairwise, pointwise), :mod:`~milr.training.contrastive` or
:mod:`~milr.training.distill` -- and the deployable files are copied to ``export``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence, Union

import torch

from milr.training.card import DEPLOY_FILES, clean_cfg, export, write_card_files
from milr.training.config import load_train_recipe
from milr.errors import UserError
from milr.training.module import check_loggers, last_checkpoint

log = logging.getLogger("milr.training")


def generate_world_data(cfg: dict, folder: Path) -> None:
    """``data.generate``: write MiniMUG world data and point data.train (and val/test) at it.

    Training rows use TRAIN-split prompts; ``n_test`` rows use TEST-split prompts (compositions no
    training prompt has), the honest held-out set.
    """
    from milr.world import data as world_data

    g = cfg["data"]["generate"]
    fmt = g["format"] or {"pairwise": "pairwise", "pointwise": "pointwise", "contrastive": "captions"}[cfg["task"]]
    writer = {"pairwise": world_data.write_pairwise, "pointwise": world_data.write_pointwise,
              "captions": world_data.write_captions}[fmt]
    seed, tags = int(g["seed"]), g["tags"]
    extra = {"kind_weights": dict(g["kind_weights"])} if g["kind_weights"] else {}
    cfg["data"]["train"] = str(writer(folder, int(g["n"]), "train", tags, seed, file_name="train.jsonl", **extra))
    cfg["data"]["image_root"] = str(folder)
    cfg["data"]["format"] = "jsonl"
    if g["n_val"] > 0:
        # Validation keeps the world's uniform mix of near misses, so it stays comparable across stages.
        cfg["data"]["val"] = str(writer(folder, int(g["n_val"]), "train", tags, seed + 1, file_name="val.jsonl"))
    if g["n_test"] > 0:
        cfg["data"]["test"] = str(writer(folder, int(g["n_test"]), "test", tags, seed + 2, file_name="test.jsonl"))


def train_critic(recipe: Union[str, Path, dict], overrides: Union[Sequence[str], dict, None] = None,
                 resume: bool = False) -> Path:
    """Train a critic from a recipe (path, shipped name, or dict) and return its checkpoint folder.

    ``overrides``: dotted ``key=value`` strings (``train.epochs=3``) or a nested dict. ``resume``:
    continue from ``<output>/checkpoints/last.ckpt`` (raise ``train.epochs`` to train longer). The
    folder is ready for ``{name: trained, path: <folder>}``; with ``export:`` the deployable files
    are also copied there.
    """
    import yaml

    cfg = load_train_recipe(recipe, overrides)
    check_loggers(cfg["train"]["logger"], cfg["_source"])
    out = Path(cfg["output"])  # relative to the working directory, like a run's output_dir
    if resume and not last_checkpoint(out).is_file():
        raise UserError(f"--resume: {last_checkpoint(out)} does not exist (nothing to resume in {out}); train without --resume first")
    out.mkdir(parents=True, exist_ok=True)
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    if cfg["data"]["generate"]:
        if resume and (out / "data" / "train.jsonl").is_file():  # the same data as the run being resumed
            saved = yaml.safe_load((out / "recipe.yaml").read_text())
            cfg["data"].update({k: saved["data"][k] for k in ("train", "val", "test", "image_root", "format")})
        else:
            generate_world_data(cfg, out / "data")
    (out / "recipe.yaml").write_text(yaml.safe_dump(clean_cfg(cfg), sort_keys=False))
    if cfg["task"] == "contrastive":
        from milr.training.contrastive import train_contrastive

        train_contrastive(cfg, out, resume)
    elif cfg["task"] == "distill":
        from milr.training.distill import train_distill

        train_distill(cfg, out, resume)
    else:
        from milr.training.reward import train_reward

        train_reward(cfg, out, resume)
    info = json.loads((out / "critic.json").read_text())
    deploy = DEPLOY_FILES + (f"{cfg['name']}.json",) + tuple(info.get("files", ()))
    if cfg["aliases"]:
        info["aliases"] = list(cfg["aliases"])
        write_card_files(out, info)
        log.info("register it by name: add to your critics.yaml: %s",
                 "; ".join(f"{a}: {{path: {out.resolve()}}}" for a in cfg["aliases"]))
    export(out, cfg["export"], deploy)
    return out


__all__ = ["train_critic", "generate_world_data"]
