"""Ways to spread one run over several processes or devices.

- :mod:`milr.executors.shards`: static shards (``milr run ... --shard K/N``) and ``milr merge``, for
  SLURM arrays and torchrun users; no extra dependency.
- :mod:`milr.executors.ray_executor`: ``run.executor: ray``, one Ray actor per device, prompts handed
  out as workers free up (``pip install "milr[ray]"``).
"""
