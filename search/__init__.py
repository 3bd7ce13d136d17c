"""Search strategies: the index of built-in strategies and their cards.

One file per strategy, each registering itself with ``@SEARCHES.register(name)`` and listed with its
card in ``index.yaml`` beside this file; strategies follow the ask/tell protocol of
:class:`milr.interfaces.Search`.
"""

from pathlib import Path

from milr.cards import SearchCard, register_index
from milr.registry import SEARCHES

register_index(SEARCHES, SearchCard, Path(__file__).with_name("index.yaml"), __name__)
