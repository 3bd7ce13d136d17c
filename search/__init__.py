"""Search strategies: the index of built-in strategies and their cards.

One file per strategy, each registering itself with ``@SEARCHES.register(name)``; strategies
follow the ask/tell protocol of :class:`milr.interfaces.Search`.
"""

from milr.cards import SearchCard
from milr.registry import SEARCHES

SEARCHES.register_lazy(
    "reinforce",
    "milr.search.reinforce:Reinforce",
    card=SearchCard(
        summary="MILR: REINFORCE over last-layer text and image latents (Adam on -R * sum log p); presets faithful/default",
        needs_latents=True,
        reference="Mi et al. 2025, MILR (arXiv 2509.22761)",
    ),
    aliases=("milr",),
    tags={"default": {"preset": "default"}, "faithful": {"preset": "faithful"}},
)
SEARCHES.register_lazy(
    "best_of_n",
    "milr.search.best_of_n:BestOfN",
    card=SearchCard(
        summary="N independent samples, keep the best by the critic (optional cheap-critic cascade)",
        reference="Best-of-N baseline as in MILR Table 1",
    ),
    aliases=("bon",),
)
SEARCHES.register_lazy(
    "cma_es",
    "milr.search.cma_es:CMAES",
    card=SearchCard(
        summary="CMA-ES (pycma, separable for high dimensions) over the same latents as MILR; population from the budget",
        needs_latents=True,
        reference="Hansen 2016, The CMA Evolution Strategy (arXiv 1604.00772); pycma",
    ),
    aliases=("cma",),
)
SEARCHES.register_lazy(
    "generate",
    "milr.search.generate:PlainGeneration",
    card=SearchCard(summary="No search: one ordinary generation (the base model)"),
    aliases=("none",),
)
