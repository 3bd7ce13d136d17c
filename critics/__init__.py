"""Critics (rewards): the index of built-in critics and their cards.

Each critic lives in its own file in this folder and registers itself with
``@CRITICS.register(name)``; ``index.yaml`` beside this file lists each one with its card,
declared lazily so ``milr list critics`` shows the cards without importing torch or the critic's
dependencies. Rewards follow one convention: higher is better, and the card states the range.
"""

from pathlib import Path

from milr.cards import CriticCard, register_index
from milr.registry import CRITICS

register_index(CRITICS, CriticCard, Path(__file__).with_name("index.yaml"), __name__)


def _register_user_critics() -> None:
    # Names from the user's critics.yaml (see milr.critics.trained); problems are warnings here.
    # Without the file nothing is imported: start-up loads only the critics a recipe names.
    from milr.critics.shipped import user_config_path

    if user_config_path().is_file():
        from milr.critics.trained import register_user_critics

        register_user_critics()


_register_user_critics()
