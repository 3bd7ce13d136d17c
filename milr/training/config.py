"""The ``milr train-critic`` recipe: a pydantic schema read the way run recipes are read.

One config system (``milr.recipe``): YAML with ``extends``, dotted ``key.path=value`` overrides
after the recipe, and every problem reported as one line naming the file and key path with a
did-you-mean, before any data or weights load (LightningCLI's rule: configuration errors are usage
messages, not tracebacks). Paths written in a recipe file are relative to that file; paths given as
overrides are relative to the working directory.

The validated recipe is handed to the trainers as a plain dict (``model_dump``), the shape the
task modules and the saved ``recipe.yaml`` use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from milr.config import MergeRule, did_you_mean
from milr.recipe import MAX_SEED, MAX_THREADS, RecipeError, RecipeErrors
from milr.registry import CRITICS, MODELS

TASKS = ("pairwise", "pointwise", "contrastive", "distill")
LOGGERS = ("csv", "tensorboard", "wandb", "mlflow", "none")
DATA_FORMATS = ("jsonl", "csv", "parquet", "folder", "hf")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GenerateSpec(_Strict):
    """Write MiniMUG world data first (into ``<output>/data``) instead of reading ``data.train``."""

    format: Optional[Literal["pairwise", "pointwise", "captions"]] = None  # default: the task's
    n: int = Field(2000, ge=1, le=10_000_000)
    n_val: int = Field(0, ge=0, le=1_000_000)  # a separate validation file (same TRAIN prompts: leaks; prefer val_fraction)
    n_test: int = Field(0, ge=0, le=1_000_000)  # a held-out test file on TEST-split prompts
    seed: int = Field(0, ge=0, le=MAX_SEED)
    tags: Optional[list[str]] = None
    source: Literal["world"] = "world"
    kind_weights: Optional[dict[str, float]] = None


class DataSpec(_Strict):
    train: Optional[str] = None  # JSONL/CSV/Parquet file, image folder (metadata.*), or a saved HF dataset
    val: Optional[str] = None
    test: Optional[str] = None  # held out: scored once, with the kept checkpoint, after training
    format: Optional[Literal[DATA_FORMATS]] = None  # type: ignore[valid-type]  # default: from the path
    hf_split: Optional[str] = None  # which split of a saved DatasetDict (default: train / validation / test)
    columns: dict[str, str] = {}  # the data's column names: {chosen: image_0, rejected: image_1, prompt: caption}
    image_root: Optional[str] = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split: Literal["grouped", "random"] = "grouped"  # grouped: no prompt or image on both sides
    image_size: Optional[int] = Field(None, ge=4, le=4096)  # default: the first training image's size
    target: Optional[Literal["score", "label"]] = None  # pointwise: default whichever the data has, label first
    max_examples: Optional[int] = Field(None, ge=1)
    preload: bool = True  # keep decoded images in memory (small images)
    generate: Optional[GenerateSpec] = None


class ModelSpec(_Strict):
    backbone: Literal["cnn", "open_clip", "blip"] = "cnn"
    width: int = Field(32, ge=1, le=4096)
    depth: int = Field(4, ge=1, le=16)
    stem: Literal["conv", "patch"] = "conv"
    text_encoder: Literal["words", "bow", "clip"] = "words"
    text_dim: int = Field(64, ge=1, le=8192)
    text_layers: int = Field(1, ge=1, le=48)
    max_words: int = Field(32, ge=1, le=4096)
    clip_model: Optional[str] = None  # open_clip arch name, model-config JSON or folder
    clip_pretrained: Optional[str] = None  # local weights or a cached tag
    blip_model: Optional[str] = None  # a transformers BLIP folder (save_pretrained), for backbone blip
    head: Literal["mlp", "cosine"] = "mlp"  # cosine: HPSv2/PickScore's scaled CLIP cosine (open_clip only)
    finetune: bool = False
    head_hidden: int = Field(128, ge=1, le=65536)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    init_from: Optional[str] = None  # a trained critic folder (or shipped name) to start from
    open_clip_config: Optional[dict[str, Any]] = None  # contrastive: the model config when clip_model is not given
    preprocess: Optional[dict[str, Any]] = None  # contrastive: open_clip preprocess cfg written next to the weights


class TrainSpec(_Strict):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    lr: float = Field(1.0e-3, ge=0.0)
    weight_decay: float = Field(1.0e-4, ge=0.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    patience: Optional[int] = Field(3, ge=0)
    monitor: str = "val_loss"
    min_delta: float = 0.0
    devices: Union[int, str, list[int]] = 1
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "tpu", "auto"] = "cpu"  # Lightning's names
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp | deepspeed ... (Lightning's own strategies)
    precision: str = "32-true"  # Lightning's: 32-true | 16-mixed | bf16-mixed | ...
    num_workers: int = Field(0, ge=0, le=256)
    max_time: Optional[str] = None  # Lightning's "DD:HH:MM:SS"
    max_steps: int = Field(-1, ge=-1)
    logger: Union[Literal[LOGGERS], list[Literal[LOGGERS]], None, bool] = "csv"  # type: ignore[valid-type]
    log_every_n_steps: int = Field(20, ge=1)
    threads: Optional[int] = Field(None, ge=1, le=MAX_THREADS)  # torch.set_num_threads for CPU training
    weights_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # dtype of the saved weights
    progress_bar: Optional[bool] = None  # default: on when stderr is a terminal

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        allowed = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine")
        if str(v) not in allowed:
            hint = did_you_mean(str(v), allowed, n=1)
            raise ValueError(f"found {v!r}{hint} (allowed: {', '.join(allowed)})")
        return str(v)


class DistillSpec(_Strict):
    teacher: Optional[dict[str, Any]] = None  # {name: ..., **args} or {critics: [{name, weight, ...}], combine: {...}}
    teacher_model: Optional[dict[str, Any]] = None  # {name: minimug, ...} for teachers that judge with a MUG model
    source: str = "world"  # "world" or a JSONL of {"prompt", "image"[, "metadata"]}
    n_train: int = Field(2000, ge=1)
    n_test: int = Field(300, ge=1)
    tags: Optional[list[str]] = None
    follow_fraction: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    batch_size: int = Field(32, ge=1)


class TrainCriticConfig(_Strict):
    """A ``milr train-critic`` recipe (every key optional except ``task``, ``output`` and the data)."""

    task: Literal[TASKS]  # type: ignore[valid-type]
    name: Optional[str] = None
    description: Optional[str] = None
    output: str
    export: Optional[str] = None  # a second folder that receives only the deployable files
    aliases: list[str] = []
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    loss: Optional[Literal["mse", "bce"]] = None  # pointwise: default bce for labels, mse for scores
    train: TrainSpec = TrainSpec()
    distill: DistillSpec = DistillSpec()



# The merge rule of extends and overrides: a teacher (or teacher model) given another name replaces
# the parent's, arguments and all (milr.config.deep_merge).
TRAIN_RULE = MergeRule({"distill.teacher": CRITICS, "distill.teacher_model": MODELS}, nested=CRITICS)


def _resolve_file_paths(data: dict, base_dir: Path) -> None:
    """Paths written in a recipe file are relative to that file (``output``/``export``: to the working directory)."""

    def fix(section: Any, key: str, must_exist: bool = False) -> None:
        if not isinstance(section, dict):
            return
        v = section.get(key)
        if isinstance(v, str) and v and v != "world" and not os.path.isabs(v) and not v.startswith(("hf-hub:", "local-dir:")):
            cand = base_dir / v
            if not must_exist or cand.exists():
                section[key] = str(cand)

    for key in ("train", "val", "test", "image_root"):
        fix(data.get("data"), key)
    # Model references may also be architecture names or shipped names: only files next to the recipe.
    for key in ("clip_model", "clip_pretrained", "init_from", "blip_model"):
        fix(data.get("model"), key, must_exist=True)
    fix(data.get("distill"), "source")


def _errors(e: ValidationError, file: Optional[str]) -> RecipeError:
    """One RecipeError per problem (unknown keys together, each with its did-you-mean); the task
    and the output folder with their own words."""
    from milr.config import schema_errors

    out: list[RecipeError] = []
    rest = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if loc == "task" and err["type"] == "literal_error":
            hint = did_you_mean(str(err.get("input")), TASKS, n=1)
            out.append(RecipeError(file, "task", f"task must be one of {', '.join(TASKS)}, got {err.get('input')!r}{hint}"))
        elif loc == "output" and err["type"] == "missing":
            out.append(RecipeError(file, "output", "'output' (the checkpoint folder) is required"))
        else:
            rest.append(err)
    if rest:
        found = schema_errors(rest, file, TrainCriticConfig, group_unknown=True)
        out = getattr(found, "errors", [found]) + out
    return out[0] if len(out) == 1 else RecipeErrors(out)


def _check(cfg: dict, file: Optional[str]) -> None:
    """Rules across keys (the schema checks each key alone)."""
    m, d, task = cfg["model"], cfg["data"], cfg["task"]

    def fail(path: str, problem: str) -> None:
        raise RecipeError(file, path, problem)

    if task != "distill" and not d["train"] and not d["generate"]:
        fail("data.train", f"data.train (a JSONL/CSV/Parquet file, image folder or saved dataset) is required for task {task}")
    if task == "distill" and not cfg["distill"]["teacher"]:
        fail("distill.teacher", "distill.teacher ({name: ..., args}) is required for task distill")
    if (m["backbone"] == "open_clip" or m["text_encoder"] == "clip") and task != "contrastive" and not m["clip_model"]:
        fail("model.clip_model", "model.clip_model (an open_clip architecture, model-config JSON or folder) is required "
                                 "for backbone open_clip or text_encoder clip")
    if m["backbone"] == "blip" and not m["blip_model"] and not m["init_from"]:
        fail("model.blip_model", "model.blip_model (a local transformers BLIP folder) is required for backbone blip")
    if m["head"] == "cosine" and (m["backbone"] != "open_clip" or not m["finetune"]):
        fail("model.head", "head cosine (HPSv2/PickScore: the CLIP's scaled cosine is the reward) needs backbone "
                           "open_clip and finetune: true (a frozen CLIP with no head has nothing to train)")
    if task == "contrastive" and not (m["clip_model"] or m["open_clip_config"]):
        fail("model.clip_model", "task contrastive needs model.clip_model (arch/JSON/folder) or model.open_clip_config (a dict)")
    if task == "distill":  # the teacher (members, combine) and its model against their signatures, now
        _check_teacher(cfg["distill"], file)
    g = d["generate"]
    if g:
        want = {"pairwise": "pairwise", "pointwise": "pointwise", "contrastive": "captions"}.get(task)
        if g["format"] not in (None, want):
            fail("data.generate.format", f"{g['format']!r} does not fit task {task!r} (expected {want!r})")
        if g["kind_weights"] and (g["format"] or want) != "pairwise":
            fail("data.generate.kind_weights", "applies to pairwise data only")


def _check_teacher(distill: dict, file: Optional[str]) -> None:
    from milr.recipe import check_spec, raise_all

    teacher, errors = distill["teacher"], []
    if isinstance(teacher, dict) and "critics" in teacher:
        from milr.critics.ensemble_config import validate_combine

        members = teacher["critics"] if isinstance(teacher["critics"], list) else []
        for i, c in enumerate(members):
            errors += check_spec(CRITICS, c, f"distill.teacher.critics.{i}", file)
        names = [c.get("name") if isinstance(c, dict) else str(c) for c in members]
        names = [n if names.index(n) == i else f"{n}#{i}" for i, n in enumerate(names)]
        errors += [RecipeError(file, path, problem) for path, problem in validate_combine(
            teacher.get("combine"), names, None, [float(c.get("weight", 1.0)) for c in members if isinstance(c, dict)],
            prefix="distill.teacher.combine")]
    else:
        errors += check_spec(CRITICS, teacher, "distill.teacher", file)
    if distill["teacher_model"]:
        errors += check_spec(MODELS, distill["teacher_model"], "distill.teacher_model", file)
    raise_all(errors)


def load_train_recipe(recipe: Union[str, Path, dict], overrides: Union[Sequence[str], dict, None] = None) -> dict:
    """Read a training recipe (path, shipped name or dict), apply overrides, fill defaults and check it.

    ``overrides``: dotted ``key.path=value`` strings (values parsed as YAML) or a nested dict.
    Raises :class:`milr.recipe.RecipeError` (a ``ValueError``) naming the key path.
    """
    from milr.config import load_data

    # Relative paths in the file are the file's; the command line's stay the working directory's.
    data, file = load_data(recipe, overrides, TRAIN_RULE, before_overrides=_resolve_file_paths)
    try:
        cfg = TrainCriticConfig.model_validate(data).model_dump()
    except ValidationError as e:
        raise _errors(e, file) from None
    _check(cfg, file)
    cfg["name"] = cfg["name"] or Path(str(cfg["output"])).name
    cfg["_source"] = file
    return cfg


__all__ = ["TrainCriticConfig", "load_train_recipe", "TASKS", "LOGGERS"]
