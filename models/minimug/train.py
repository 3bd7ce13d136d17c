"""Training MiniMUG with Lightning: the patch tokenizer first, then the transformer.

The recipe follows Janus-Pro's unified training (Chen et al. 2025, arXiv 2501.17811) at toy scale:
one autoregressive transformer trained on a mix of

* generation sequences ``[BOS] prompt [PLAN] plan [EOP] [BOI] 64 image tokens`` (loss on the plan
  words, [EOP] and the image tokens), a no-plan variant ``[BOS] prompt [EOP] [BOI] ...`` (so an
  image can be made without reasoning) and, with probability ``cond_dropout``, the unconditional
  form in which every token between [BOS] and [BOI] is [PAD] (classifier-free guidance, Ho &
  Salimans 2022, as Janus trains it);
* understanding sequences ``[BOS] [IMG] 64 image codes [Q] question [ANS] yes|no`` with several
  question/answer pairs per image (loss on the answers only).

Samples are drawn fresh from the scene world every step, from TRAIN prompts only
(:func:`milr.world.suite.is_train_prompt`); batch ``i`` is a pure function of
``(seed, i)``, so a run is reproducible from its seed and resumes with the data it would have seen.

Entry point: :func:`train_minimug` (``milr train minimug CONFIG --out DIR``). Checkpoints every
few minutes (``ModelCheckpoint(train_time_interval=...)``) and resumes from ``last.ckpt``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .model import ANS, BOI, BOS, EOP, IMG, PAD, PLAN, Q, SPECIALS, UNK, CONFIG_FILE, WEIGHTS_FILE, MiniMUGConfig, MiniMUGNet, split_words
from .tokenizer import PatchTokenizer
# The config schema and its loader live in train_config (no torch: the CLI checks a config first).
from .train_config import DEFAULTS, load_config  # noqa: F401

IGNORE = -100

def world_words() -> list[str]:
    """Text vocabulary: every word the world emits, plus the answers."""
    from milr import world

    words = [w for w in world.VOCAB if w not in SPECIALS]
    for w in ("yes", "no"):
        if w not in words:
            words.append(w)
    return words


def model_config(cfg: dict) -> MiniMUGConfig:
    return MiniMUGConfig(words=world_words(), codebook_size=int(cfg["tokenizer"]["codebook_size"]), **cfg["model"])


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def render_training_images(n: int, seed: int) -> np.ndarray:
    """Rendered world images for fitting the tokenizer: scenes for train prompts and near-misses."""
    from milr import world
    from milr.world import suite

    rng = np.random.default_rng([seed, 1])
    out = np.empty((n, world.IMAGE_SIZE, world.IMAGE_SIZE, 3), np.uint8)
    for i in range(n):
        md = suite.sample_train_prompt(rng)
        r = rng.random()
        if r < 0.6:
            scene = world.sample_scene_for(md, rng)
        elif r < 0.85:
            scene = world.sample_scene_violating(md, rng)
        else:
            scene = world.random_scene(rng)
        out[i] = world.render(scene)
    return out


def fit_tokenizer(cfg: dict) -> PatchTokenizer:
    t = cfg["tokenizer"]
    images = render_training_images(int(t["images"]), int(cfg["seed"]))
    return PatchTokenizer.fit(images, int(t["codebook_size"]), iters=int(t["iters"]), weight_power=float(t["weight_power"]))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
class SequenceBuilder:
    """Turns world samples into token sequences with their targets (one id space, see MiniMUGNet)."""

    def __init__(self, config: MiniMUGConfig, tokenizer: PatchTokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.vocab = list(SPECIALS) + list(config.words)
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.text_vocab = len(self.vocab)
        self.gen_offset = self.text_vocab
        self.und_offset = self.text_vocab + config.codebook_size
        self.yes, self.no = self.word_to_id["yes"], self.word_to_id["no"]

    def ids(self, text: str) -> list[int]:
        out = [self.word_to_id.get(w, UNK) for w in split_words(text)]
        if UNK in out:
            raise ValueError(f"text has words outside the vocabulary: {text!r}")
        return out

    def generation(self, prompt: str, plan: Optional[str], codes: np.ndarray, uncond: bool) -> tuple[list[int], list[int]]:
        """``(ids, targets)``: targets[p] is the token that position p must predict, or IGNORE."""
        middle = self.ids(prompt) + ([PLAN] + self.ids(plan) if plan is not None else []) + [EOP]
        n_plan = len(self.ids(plan)) + 1 if plan is not None else 0  # plan words and EOP
        if uncond:
            middle = [PAD] * len(middle)
        seq = [BOS] + middle + [BOI] + [self.gen_offset + int(c) for c in codes]
        tgt = [IGNORE] * len(seq)
        if plan is not None and not uncond:
            eop = len(middle)  # index of EOP in seq (BOS at 0)
            for p in range(eop - n_plan, eop):  # from [PLAN] to the last plan word
                tgt[p] = seq[p + 1]
        img0 = len(middle) + 1  # index of BOI
        for p in range(img0, len(seq) - 1):
            tgt[p] = seq[p + 1]
        return seq, tgt

    def understanding(self, codes: np.ndarray, qa: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
        seq = [BOS, IMG] + [self.und_offset + int(c) for c in codes]
        tgt = [IGNORE] * len(seq)
        for q, a in qa:
            seq += [Q] + self.ids(q) + [ANS]
            tgt += [IGNORE] * (len(self.ids(q)) + 1) + [self.yes if a else self.no]
            seq.append(self.yes if a else self.no)
            tgt.append(IGNORE)
        return seq, tgt


def collate(rows: list[tuple[list[int], list[int]]], kinds: list[int]) -> dict[str, torch.Tensor]:
    n = max(len(s) for s, _ in rows)
    ids = torch.full((len(rows), n), PAD, dtype=torch.long)
    tgt = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    for i, (s, t) in enumerate(rows):
        ids[i, : len(s)] = torch.tensor(s)
        tgt[i, : len(t)] = torch.tensor(t)
    return {"ids": ids, "targets": tgt, "kind": torch.tensor(kinds)}


class WorldBatches(torch.utils.data.IterableDataset):
    """An endless stream of fresh training batches; batch ``i`` depends only on ``(seed, i)``."""

    def __init__(self, cfg: dict, builder: SequenceBuilder, start_step: int = 0):
        super().__init__()
        self.cfg = cfg
        self.builder = builder
        self.start_step = start_step

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        from milr import world
        from milr.world import suite

        d = self.cfg["data"]
        rng = np.random.default_rng([int(self.cfg["seed"]), 2, index])
        bsz = int(d["batch_size"])
        n_und = int(round(bsz * float(d["understanding_fraction"])))
        rows, kinds, images, pending = [], [], [], []
        for i in range(bsz):
            md = suite.sample_train_prompt(rng)
            if i < n_und:
                r = rng.random()
                if r < float(d["random_scene_fraction"]):
                    scene = world.random_scene(rng)
                elif r < float(d["random_scene_fraction"]) + float(d["violating_fraction"]):
                    scene = world.sample_scene_violating(md, rng)
                else:
                    scene = world.sample_scene_for(md, rng)
                qa = []
                k = int(d["questions_per_image"])
                # Half balanced random questions, half the prompt's own decomposed questions (what
                # the self-judging critic asks), each with the scene's true answer.
                own = world.questions_for(md)
                for j in range(k):
                    if j % 2 == 1 and own:
                        q = own[int(rng.integers(len(own)))]
                        qa.append((q, world.answer(scene, q)))
                    else:
                        qa.append(world.sample_question(scene, rng))
                pending.append(("und", qa))
            else:
                scene = world.sample_scene_for(md, rng)
                plan = None if rng.random() < float(d["no_plan_fraction"]) else world.plan_text(scene)
                uncond = bool(rng.random() < float(d["cond_dropout"]))
                pending.append(("gen", (md["prompt"], plan, uncond)))
            images.append(world.render(scene))
        codes = self.builder.tokenizer.encode(np.stack(images)).numpy()
        for (kind, info), c in zip(pending, codes):
            if kind == "und":
                rows.append(self.builder.understanding(c, info))
                kinds.append(1)
            else:
                rows.append(self.builder.generation(info[0], info[1], c, info[2]))
                kinds.append(0)
        return collate(rows, kinds)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ValueError("WorldBatches is a single stream; use num_workers 0 or 1")
        i = self.start_step
        while True:
            yield self.batch(i)
            i += 1


# ---------------------------------------------------------------------------------------------
# Lightning
# ---------------------------------------------------------------------------------------------
class MiniMUGLightning(pl.LightningModule):
    """Loss = image CE + plan CE + answer CE (each a mean over its tokens, weighted).

    A module-level class, so a checkpoint restores with ``MiniMUGLightning.load_from_checkpoint``:
    the resolved training config is its one hyperparameter, and the tokenizer's centroids (the
    ``code_pixels`` buffer) come back with the state dict.
    """

    def __init__(self, cfg: dict, codebook: Optional[np.ndarray] = None):
        super().__init__()
        self.save_hyperparameters("cfg")
        self.cfg = cfg
        self.net = MiniMUGNet(model_config(cfg))
        if codebook is not None:
            self.net.set_code_pixels(codebook)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, tgt = batch["ids"], batch["targets"]
        h, _ = self.net(ids)
        gen0, und0 = self.net.gen_offset, self.net.und_offset
        img = (tgt >= gen0) & (tgt < und0)
        text = (tgt >= 0) & (tgt < gen0)
        is_und = batch["kind"].bool()[:, None].expand_as(tgt)
        out = {}
        if img.any():
            out["image"] = F.cross_entropy(self.net.image_logits(h[img]).float(), tgt[img] - gen0)
        plan = text & ~is_und
        if plan.any():
            out["plan"] = F.cross_entropy(self.net.lm_head(h[plan]).float(), tgt[plan])
        ans = text & is_und
        if ans.any():
            logits = self.net.lm_head(h[ans]).float()
            out["answer"] = F.cross_entropy(logits, tgt[ans])
            out["answer_acc"] = (logits.argmax(-1) == tgt[ans]).float().mean()
        w = self.cfg["loss"]
        out["loss"] = sum(float(w[k]) * out[k] for k in ("image", "plan", "answer") if k in out)
        return out

    def training_step(self, batch, batch_idx):
        out = self.losses(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=True, on_step=True, on_epoch=False,
                      batch_size=batch["ids"].shape[0])
        return out["loss"]

    def configure_optimizers(self):
        o = self.cfg["optim"]
        decay, no_decay = [], []
        for n, p in self.net.named_parameters():
            (decay if p.dim() >= 2 and "embed" not in n else no_decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(o["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
            lr=float(o["lr"]), betas=tuple(o["betas"]),
        )
        total = int(self.cfg["trainer"]["max_steps"])
        warm = int(o["warmup_steps"])
        floor = float(o["min_lr_ratio"])

        def lr_at(step: int) -> float:  # linear warm-up, cosine decay to min_lr_ratio
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LogLines(pl.Callback):
    """Plain log lines (nohup-friendly) every ``every`` steps: step, losses, steps/s, elapsed minutes."""

    def __init__(self, every: int):
        super().__init__()
        self.every = int(every)

    def on_train_start(self, trainer, module):
        self.t0 = time.perf_counter()
        self.s0 = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every and step != trainer.max_steps:
            return
        m = {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        dt = time.perf_counter() - self.t0
        rate = (step - self.s0) / max(dt, 1e-9)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        parts = " ".join(f"{k}={v:.4f}" for k, v in sorted(m.items()))
        print(f"step {step} {parts} lr={lr:.2e} {rate:.2f} steps/s {dt / 60:.1f} min", flush=True)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def export_weights(net: MiniMUGNet, tokenizer: PatchTokenizer, out: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write ``minimug.safetensors`` (``net.*`` and ``tokenizer.*`` tensors) and ``config.json``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"net." + k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors.update({k: v.contiguous() for k, v in tokenizer.state_dict().items()})
    save_file(tensors, str(out / WEIGHTS_FILE))
    meta = {"model": net.config.to_dict()}
    meta.update(extra or {})
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return out


def net_from_checkpoint(ckpt_path: Union[str, Path], cfg: dict) -> MiniMUGNet:
    """The transformer of a Lightning checkpoint (to evaluate or export an intermediate one)."""
    state = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)["state_dict"]
    net = MiniMUGNet(model_config(cfg))
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    return net


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def train_minimug(config_path: Union[str, Path, dict], out_dir: Union[str, Path], resume: bool = True,
                  overrides: Sequence[str] = ()) -> Path:
    """Fit the tokenizer, train the transformer, export weights to ``out_dir/weights``.

    Resumes from ``out_dir/checkpoints/last.ckpt`` when it exists and ``resume`` is true; the
    tokenizer is then read back from ``out_dir/tokenizer.safetensors``. Returns the weights folder
    (``minimug.safetensors`` + ``config.json``), loadable with ``MiniMUG(weights=...)``.
    """
    from safetensors.torch import load_file, save_file

    cfg = load_config(config_path, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    torch.set_num_threads(int(cfg["threads"]))
    seed = int(cfg["seed"])
    t_start = time.perf_counter()

    tok_path = out / "tokenizer.safetensors"
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resuming = resume and last.is_file()
    if resuming and tok_path.is_file():
        tokenizer = PatchTokenizer.from_state_dict(load_file(str(tok_path)))
        print(f"resuming from {last}; tokenizer read from {tok_path}", flush=True)
    else:
        t0 = time.perf_counter()
        tokenizer = fit_tokenizer(cfg)
        save_file({k: v.contiguous() for k, v in tokenizer.state_dict().items()}, str(tok_path))
        print(f"tokenizer: {tokenizer.codebook_size} codes over {len(tokenizer.known_codes)} distinct patches "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)

    pl.seed_everything(seed, workers=True, verbose=False)
    module = MiniMUGLightning(cfg, tokenizer.codebook)
    mcfg = module.net.config
    n_params = sum(p.numel() for p in module.net.parameters())
    print(f"MiniMUG: {n_params / 1e6:.2f}M parameters, hidden {mcfg.hidden_size}, {mcfg.layers} layers", flush=True)

    start_step = 0
    if resuming:
        start_step = int(torch.load(str(last), map_location="cpu", weights_only=False)["global_step"])
    data = WorldBatches(cfg, SequenceBuilder(mcfg, tokenizer), start_step=start_step)
    # One worker process overlaps world sampling with the training step (it draws the same batches).
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=int(cfg["trainer"]["num_workers"]))

    tr = cfg["trainer"]
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=str(ckpt_dir), filename="step{step}", auto_insert_metric_name=False, save_last=True, save_top_k=1,
        train_time_interval=timedelta(minutes=float(tr["checkpoint_minutes"])),
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=int(tr["max_steps"]),
        max_time=timedelta(minutes=float(tr["max_minutes"])),
        gradient_clip_val=float(cfg["optim"]["grad_clip"]), precision="32-true",
        callbacks=[ckpt, LogLines(int(tr["log_every"]))],
        logger=pl.loggers.CSVLogger(str(out), name="logs"), enable_progress_bar=bool(tr["progress_bar"]),
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False, default_root_dir=str(out),
        log_every_n_steps=max(1, int(tr["log_every"])),
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resuming else None)
    trainer.save_checkpoint(str(ckpt_dir / "final.ckpt"))
    # Keep last.ckpt pointing at the end state so a rerun does not train again.
    trainer.save_checkpoint(str(last))

    minutes = (time.perf_counter() - t_start) / 60
    extra = {
        "training": {
            "steps": int(trainer.global_step),
            "samples": int(trainer.global_step) * int(cfg["data"]["batch_size"]),
            "wall_minutes_this_run": round(minutes, 1),
            "parameters": n_params,
            "seed": seed,
            "config": cfg,
        },
        "tokenizer": {"codebook_size": tokenizer.codebook_size, "known_patches": int(len(tokenizer.known_codes))},
    }
    path = export_weights(module.net, tokenizer, out / "weights", extra)
    print(f"exported weights to {path} after {trainer.global_step} steps ({minutes:.1f} min this run)", flush=True)
    return path


def main(argv: Optional[list[str]] = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Train MiniMUG (tokenizer + transformer) with Lightning")
    ap.add_argument("config")
    ap.add_argument("--out", default="checkpoints/minimug")
    ap.add_argument("--no-resume", action="store_true")
    a = ap.parse_args(argv)
    train_minimug(a.config, a.out, resume=not a.no_resume)


if __name__ == "__main__":
    main()
