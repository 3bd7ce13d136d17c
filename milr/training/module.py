"""The LightningModule of critic training, its per-task losses, and the Lightning Trainer around it.

One module-level :class:`CriticModule` (importable, restorable from a checkpoint) holds the network
and a task loss object:

* :class:`BradleyTerryLoss` -- pairwise preference, ``-log sigmoid(r_c - r_r - margin)`` (TRL's
  ``RewardTrainer``; ImageReward, arXiv 2304.05977); a tie's target is 1/2 (PickScore, arXiv
  2305.01569). Metric: pairwise accuracy over untied pairs.
* :class:`PointwiseLoss` -- MSE on standardised scores or binary cross-entropy on 0/1 labels.
  Metric: Spearman rank correlation.
* :class:`InfoNCELoss` -- CLIP's symmetric contrastive loss (Radford et al. 2021, arXiv
  2103.00020); repeated captions in a batch are positives of each other. Metric: in-batch top-1.

:func:`fit` runs Lightning's ``Trainer`` with what Lightning users expect: ``last.ckpt`` for
``--resume`` (the step counter, optimiser, scheduler and history continue), any installed logger,
a progress bar on a terminal, and the Trainer's own ``accelerator``/``devices``/``strategy``/
``precision`` (DDP included).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

from milr.errors import UserError

log = logging.getLogger("milr.training")

LN2 = math.log(2.0)
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Logger name -> (Lightning class, the package it needs, pip name).
LOGGER_PACKAGES = {"tensorboard": ("TensorBoardLogger", ("tensorboard", "tensorboardX"), "tensorboard"),
                   "wandb": ("WandbLogger", ("wandb",), "wandb"), "mlflow": ("MLFlowLogger", ("mlflow",), "mlflow"),
                   "csv": ("CSVLogger", (), "")}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    r = spearmanr(list(a), list(b)).statistic
    return float(r) if r == r else float("nan")


# =============================================================================================
# Task losses: (loss, predictions, reference) per batch, and validation metrics
# =============================================================================================
class BradleyTerryLoss:
    def __call__(self, net: nn.Module, batch: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        both = torch.cat([batch["chosen"], batch["rejected"]])
        r = net(both, torch.cat([tokens, tokens]))
        rc, rr = r.chunk(2)
        diff = rc - rr
        margin = batch.get("margin")
        tie = batch.get("tie")
        logit = diff - margin.to(diff) if margin is not None else diff
        target = torch.ones_like(diff) if tie is None else torch.where(tie.to(diff.device), 0.5, 1.0).to(diff)
        # -[t log s(x) + (1 - t) log s(-x)]: the Bradley-Terry loss, and 1/2-1/2 for a tie.
        loss = -(target * F.logsigmoid(logit) + (1 - target) * F.logsigmoid(-logit)).mean()
        return loss, diff.detach(), target

    @staticmethod
    def metrics(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        keep = ref == 1  # ties have no right answer
        if not keep.any():
            return {}
        p = pred[keep]
        return {"val_acc": float((p > 0).float().mean()) + 0.5 * float((p == 0).float().mean())}


class PointwiseLoss:
    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, net: nn.Module, batch: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = net(batch["image"], tokens)
        y = batch["target"]
        loss = F.binary_cross_entropy_with_logits(pred, y) if self.kind == "bce" else F.mse_loss(pred, y)
        return loss, pred.detach(), y

    def metrics(self, pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        m = {"val_spearman": spearman(pred.tolist(), ref.tolist())}
        if self.kind == "bce":
            m["val_acc"] = float(((pred > 0).float() == ref).float().mean())
        return m


class InfoNCELoss:
    def __init__(self, preprocess: dict, captions_key: str = "prompt"):
        self.pp = preprocess
        self.key = captions_key

    def __call__(self, net: nn.Module, batch: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from milr.open_clip_loading import preprocess_tensor

        captions = batch[self.key]
        img = F.normalize(net.encode_image(preprocess_tensor(batch["image"], self.pp)), dim=-1)
        txt = F.normalize(net.encode_text(tokens), dim=-1)
        logits = net.logit_scale.exp().clamp(max=100.0) * img @ txt.t()
        # Repeated captions are positives of each other (soft targets), not false negatives.
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=logits.dtype, device=logits.device)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())
        hit = same[torch.arange(len(captions)), logits.argmax(1)]
        return loss, hit.detach(), torch.ones_like(hit)

    @staticmethod
    def metrics(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        return {"val_top1": float(pred.mean())}


# =============================================================================================
# The module
# =============================================================================================
class CriticModule(L.LightningModule):
    """Network + task loss + AdamW with a cosine schedule; keeps a per-epoch validation history.

    The history travels in Lightning checkpoints, so a resumed run's card lists every epoch.
    """

    def __init__(self, net: nn.Module, loss: Callable, lr: float, weight_decay: float, epochs: int,
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "tokenizer"])
        self.net = net
        self.loss = loss
        self.tok = tokenizer or net.tokenize
        self.history: list[dict] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.seconds_before = 0.0  # training time of the runs this one resumes
        self._t0 = time.perf_counter()

    def on_fit_start(self) -> None:
        self._t0 = time.perf_counter()

    def seconds(self) -> float:
        """Training seconds so far, over every resumed session."""
        return self.seconds_before + time.perf_counter() - self._t0

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.loss(self.net, batch, self.tok(batch["prompt"]).to(self.device))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._step(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["prompt"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, pred, ref = self._step(batch)
        self.log("val_loss", loss, prog_bar=True, batch_size=len(batch["prompt"]), sync_dist=True)
        self._val.append((pred.float().cpu(), ref.float().cpu()))

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        pred = torch.cat([p for p, _ in self._val]).to(self.device)
        ref = torch.cat([r for _, r in self._val]).to(self.device)
        if self.trainer.world_size > 1:  # DDP: metrics over every process's predictions
            pred, ref = self.all_gather(pred).flatten(), self.all_gather(ref).flatten()
        metrics = self.loss.metrics(pred.cpu(), ref.cpu())
        for k, v in metrics.items():
            if v == v:  # already computed over every process's predictions: the sync averages equal values
                self.log(k, v, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            row = {"epoch": int(self.current_epoch), "step": int(self.global_step), **metrics}
            vl = self.trainer.callback_metrics.get("val_loss")
            if vl is not None:
                row["val_loss"] = float(vl)
            self.history.append(row)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["milr_history"] = list(self.history)
        checkpoint["milr_seconds"] = self.seconds()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("milr_history", []))
        self.seconds_before = float(checkpoint.get("milr_seconds", 0.0))

    def configure_optimizers(self) -> dict:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise UserError("nothing to train: every parameter is frozen (set model.finetune: true or use a head)")
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(self.hparams.epochs)))
        return {"optimizer": opt, "lr_scheduler": sched}


# =============================================================================================
# Trainer
# =============================================================================================
def logger_names(kind: Any) -> list[str]:
    if kind in (None, False, "none"):
        return []
    names = [kind] if isinstance(kind, str) else list(kind)
    return [n for n in names if n != "none"]


def check_loggers(kind: Any, file: Optional[str] = None) -> None:
    """Fail before training when a requested logger's package is not installed."""
    from milr.recipe import RecipeError

    for name in logger_names(kind):
        _, modules, pip = LOGGER_PACKAGES[name]
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise RecipeError(file, "train.logger", f"{name!r} needs the {pip} package, which is not installed "
                                                    f"(pip install {pip}); installed choices: {', '.join(available_loggers())}")


def available_loggers() -> list[str]:
    return [n for n, (_, mods, _) in LOGGER_PACKAGES.items() if not mods or any(importlib.util.find_spec(m) for m in mods)]


def loggers(kind: Any, out: Path, name: str) -> list:
    """Lightning loggers writing under ``out`` (CSV always first when asked for: the card reads it)."""
    from lightning.pytorch import loggers as pl_loggers

    out_list = []
    for n in logger_names(kind):
        cls = getattr(pl_loggers, LOGGER_PACKAGES[n][0])
        if n == "csv":
            out_list.append(cls(str(out), name="logs"))
        elif n == "tensorboard":
            out_list.append(cls(str(out), name="tensorboard"))
        elif n == "wandb":  # WANDB_MODE=offline keeps it local
            out_list.append(cls(project=name, name=name, save_dir=str(out)))
        elif n == "mlflow":  # a local file store unless MLFLOW_TRACKING_URI says otherwise
            out_list.append(cls(experiment_name=name, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()))
    return out_list


def _mode(monitor: str) -> str:
    return "min" if "loss" in monitor else "max"


def check_stall(task: str, history: list[dict], kept_acc: Optional[float] = None) -> list[str]:
    """Warnings for the classic Bradley-Terry failure modes.

    ``history``: per-epoch validation rows; ``kept_acc``: the accuracy of the checkpoint kept (the
    "below chance" check looks at it, not at the last epoch, when given).
    """
    accs = [h["val_acc"] for h in history if "val_acc" in h]
    if task != "pairwise" or (not accs and kept_acc is None):
        return []
    out = []
    final = kept_acc if kept_acc is not None else accs[-1]
    if len(accs) >= 2 and all(abs(a - 0.5) < 0.02 for a in accs):  # "stays": over at least two validations
        out.append(
            "validation accuracy stayed at 0.5 (the Bradley-Terry loss is then ln 2 = 0.693): the model cannot tell chosen "
            "from rejected. Check that the two images differ, that the prompt is passed, the learning rate, and that the "
            "backbone is not frozen without a head that sees both image and prompt."
        )
    elif final < 0.35:
        out.append(
            f"validation accuracy {final:.2f} (kept checkpoint) is well below chance: 'chosen' and 'rejected' may be swapped in the data"
        )
    for w in out:
        log.warning(w)
    return out


def seed_everything(seed: int) -> None:
    L.seed_everything(int(seed), workers=True, verbose=False)


def last_checkpoint(out: Path) -> Path:
    return out / "checkpoints" / "last.ckpt"


def fit(cfg: dict, data: Any, module: CriticModule, out: Path, monitor: str, resume: bool = False) -> tuple[str, float]:
    """Run Lightning's Trainer; returns (best checkpoint path, training seconds over every session).
    ``resume``: continue from ``last.ckpt``."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from milr.training.data import CriticDataModule

    t = cfg["train"]
    has_val = bool(data.val_rows)
    ckpt_path = last_checkpoint(out) if resume else None  # train_critic checked that it exists
    ckpt = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=monitor if has_val else None,
                           mode=_mode(monitor), save_top_k=1, save_last=True, enable_version_counter=False)
    callbacks: list = [ckpt]
    if t["patience"] is not None and int(t["patience"]) > 0 and has_val:
        callbacks.append(EarlyStopping(monitor=monitor, mode=_mode(monitor), patience=int(t["patience"]),
                                       min_delta=float(t["min_delta"])))
    progress = t["progress_bar"] if t["progress_bar"] is not None else sys.stderr.isatty()
    trainer = L.Trainer(
        max_epochs=int(t["epochs"]),
        max_steps=int(t["max_steps"]),
        max_time=t["max_time"],
        accelerator=t["accelerator"],
        devices=t["devices"],
        strategy=t["strategy"],
        precision=t["precision"],
        callbacks=callbacks,
        logger=loggers(t["logger"], out, cfg["name"]) or False,
        log_every_n_steps=int(t["log_every_n_steps"]),
        enable_progress_bar=bool(progress),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out),
        limit_val_batches=1.0 if has_val else 0,
    )
    dm = CriticDataModule(data, int(t["batch_size"]), int(t["num_workers"]))
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return ckpt.best_model_path, module.seconds()


def load_best(module: CriticModule, best: str) -> None:
    if best and os.path.isfile(best):
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)


def stats(x: torch.Tensor) -> dict:
    """Mean, std, range and quantiles of scores (the card's calibration)."""
    x = x.double()
    q = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64)).tolist() if len(x) else []
    return {
        "n": int(len(x)),
        "mean": float(x.mean()) if len(x) else float("nan"),
        "std": float(x.std()) if len(x) > 1 else 0.0,
        "min": float(x.min()) if len(x) else float("nan"),
        "max": float(x.max()) if len(x) else float("nan"),
        "quantiles": {f"{p:g}": v for p, v in zip(QUANTILES, q)},
    }


__all__ = ["CriticModule", "BradleyTerryLoss", "PointwiseLoss", "InfoNCELoss", "fit", "check_stall", "check_loggers",
           "loggers", "stats", "spearman", "seed_everything"]
