"""milr: test-time latent reasoning for unified multimodal image generation.

MILR (Mi et al., arXiv 2509.22761, ICLR 2026) searches a unified model's last-layer latents with
policy gradient, guided by an image critic. This package is the core: registries, recipes, the
runner, run records and the CLI. Components live in ``milr.critics``, ``milr.search`` and
``milr.models``; importing this package stays light (no torch) so ``milr list`` is fast.
"""

__version__ = "0.1.0"

from milr.registry import CRITICS, MODELS, SEARCHES, SUITES  # noqa: E402,F401


def create_critic(name_or_path, **kwargs):  # type: ignore[no-untyped-def]
    """A critic by registered name or trained-critic folder (see :func:`milr.factory.create_critic`)."""
    from milr.factory import create_critic as _create

    return _create(name_or_path, **kwargs)
