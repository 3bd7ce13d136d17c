"""Score cache: never score the same (image, prompt, critic) twice, within a run or across reruns.

A key is the sha256 of

* the image as the critic sees it after quantisation: ``round(clamp(x, 0, 1) * 255)`` as uint8
  bytes plus its shape (two float images that save to the same PNG share a key), or the image's
  token ids when the caller passes them (a VQ decoder is deterministic, so equal tokens mean equal
  pixels);
* the prompt and its metadata (JSON, sorted keys);
* the critic's :meth:`~milr.interfaces.Critic.identity` (name, arguments, weights hash, version):
  the arguments as :mod:`milr.factory` records them, defaults filled in, and for a critic that
  judges with the MUG model (``self_judge``) the model's :meth:`~milr.interfaces.MUGModel.fingerprint`,
  so two models with different weights never share an entry.

Values live in memory and, optionally, in ``<cache_dir>/scores.jsonl``: one JSON line per score,
appended with a single ``O_APPEND`` write under an advisory lock, so several processes can share
a file; a run killed mid-write leaves at most one torn last line, which loading skips. Comparable
in spirit to the on-disk caches of evaluation harnesses (e.g. lm-evaluation-harness's
``--use_cache``); no code is taken from them.

Scores that need a gradient bypass the cache: :class:`CachedCritic` only caches when autograd is
off or the images do not require grad.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

from milr.interfaces import Critic

try:  # advisory locking; not available on Windows, where O_APPEND alone is used
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def image_digest(image: torch.Tensor) -> str:
    """sha256 of one image ``[3, H, W]`` in [0, 1], quantised to uint8 (plus its shape)."""
    if image.dim() != 3:
        raise ValueError(f"image_digest: expected one [3, H, W] image, got shape {tuple(image.shape)}")
    x = image.detach().float()
    q = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    h = hashlib.sha256(b"img:" + str(tuple(q.shape)).encode())
    h.update(q.numpy().tobytes())
    bad = ~torch.isfinite(x)
    if bool(bad.any()):  # NaN casts to 0: without this an all-NaN image shares the all-black key
        h.update(b"nonfinite:" + bad.cpu().numpy().tobytes() + torch.isnan(x).cpu().numpy().tobytes())
    return h.hexdigest()


def tokens_digest(tokens: torch.Tensor) -> str:
    """sha256 of one image's token ids (as int64)."""
    t = tokens.detach().to(torch.int64).cpu().contiguous()
    h = hashlib.sha256(b"tok:" + str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def score_key(content_digest: str, prompt: str, metadata: Optional[dict], critic_identity: str) -> str:
    h = hashlib.sha256()
    for part in (content_digest, prompt, json.dumps(metadata or {}, sort_keys=True, default=str), critic_identity):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


class ScoreCache:
    """A key -> float store in memory, mirrored to an append-only JSONL file if ``cache_dir`` is set."""

    FILENAME = "scores.jsonl"

    def __init__(self, cache_dir: Optional[Union[str, Path]] = None):
        self._mem: dict[str, float] = {}
        self.hits = 0
        self.misses = 0
        self.path: Optional[Path] = None
        if cache_dir is not None:
            d = Path(cache_dir).expanduser()
            d.mkdir(parents=True, exist_ok=True)
            self.path = d / self.FILENAME
            self.reload()

    def reload(self) -> int:
        """Read every complete line of the disk file (others' appends included); returns the count."""
        if self.path is None or not self.path.exists():
            return 0
        n = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    self._mem[str(rec["k"])] = float(rec["v"])
                    n += 1
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line from a killed writer
        return n

    def __len__(self) -> int:
        return len(self._mem)

    def clear(self) -> None:
        """Forget every score held in memory and the hit counts (a disk file is left as it is)."""
        self._mem.clear()
        self.hits = self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._mem

    def get(self, key: str) -> Optional[float]:
        v = self._mem.get(key)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
        return v

    def put_many(self, items: dict[str, float]) -> None:
        self._mem.update({k: float(v) for k, v in items.items()})
        if self.path is None or not items:
            return
        data = "".join(json.dumps({"k": k, "v": float(v)}) + "\n" for k, v in items.items()).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            # A torn line left by a killed writer would glue onto ours; start on a fresh line.
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def put(self, key: str, value: float) -> None:
        self.put_many({key: value})


class CachedCritic(Critic):
    """Wraps a critic so repeated (image, prompt, critic) triples are scored once.

    ``score(images, prompts, metadata, tokens=None)``: rows found in the cache are filled from it;
    the rest go to the wrapped critic in one batch (so a batch with a repeated image calls the
    critic once for it). ``tokens`` (``[B, N]`` image token ids), when given, key the rows instead
    of the pixels. The wrapped critic's identity is read at every call, so a critic whose scores
    change (e.g. an ensemble fitting its normalisation on the first batch) changes its keys too.
    """

    def __init__(self, critic: Critic, cache: Optional[ScoreCache] = None, cache_dir: Optional[Union[str, Path]] = None):
        if not isinstance(critic, Critic):
            raise TypeError(f"CachedCritic wraps a Critic, got {type(critic).__name__}")
        if cache is not None and cache_dir is not None:
            raise ValueError("CachedCritic: give either cache or cache_dir, not both")
        self.critic = critic
        self.cache = cache if cache is not None else ScoreCache(cache_dir)
        critic.identity()  # fail early if the critic cannot say who it is
        self.card = getattr(critic, "card", None)
        self.registry_name = getattr(critic, "registry_name", None)

    def identity(self) -> str:
        return self.critic.identity()

    def __getattr__(self, name: str):
        # Forward the wrapped critic's extras (e.g. ``last_components``, ``score_differentiable``).
        if name in ("critic", "cache"):
            raise AttributeError(name)
        return getattr(self.critic, name)

    def keys(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None,
             tokens: Optional[torch.Tensor] = None) -> list[str]:
        md = metadata if metadata is not None else [{}] * len(prompts)
        if len(md) != len(prompts):
            raise ValueError(f"CachedCritic: {len(prompts)} prompts but {len(md)} metadata items")
        if tokens is not None:
            if tokens.shape[0] != len(prompts):
                raise ValueError(f"CachedCritic: tokens has {tokens.shape[0]} rows for {len(prompts)} prompts")
            digests = [tokens_digest(t) for t in tokens]
        else:
            if images.shape[0] != len(prompts):
                raise ValueError(f"CachedCritic: {images.shape[0]} images but {len(prompts)} prompts")
            digests = [image_digest(x) for x in images]
        ident = self.critic.identity()
        return [score_key(d, p, m, ident) for d, p, m in zip(digests, prompts, md)]

    def score(self, images: torch.Tensor, prompts: list[str], metadata: Optional[list[dict]] = None,
              tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        if torch.is_grad_enabled() and images.requires_grad:
            return self.critic.score(images, prompts, metadata)
        md = metadata if metadata is not None else [{} for _ in prompts]
        keys = self.keys(images, prompts, md, tokens)
        values: list[Optional[float]] = [self.cache.get(k) for k in keys]
        # Unique missing keys, first occurrence scored (duplicates within the batch share it).
        todo: dict[str, int] = {}
        for i, (k, v) in enumerate(zip(keys, values)):
            if v is None and k not in todo:
                todo[k] = i
        if todo:
            rows = list(todo.values())
            fresh = self.critic.score(images[rows], [prompts[i] for i in rows], [md[i] for i in rows])
            new = {k: float(s) for k, s in zip(todo, fresh.detach().float().cpu())}
            self.cache.put_many(new)
            values = [new[k] if v is None else v for k, v in zip(keys, values)]
        return torch.tensor(values, dtype=torch.float32, device=images.device)
