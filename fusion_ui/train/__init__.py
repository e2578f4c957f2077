"""Training small modules beside frozen models: one loop (:mod:`fusion_ui.train.loop`), the
answer-only LM loss (:mod:`fusion_ui.train.lm_loss`) and training on prompt/answer rows with it
(:mod:`fusion_ui.train.answers`), shared by CALM's bridges, soft prompts and the connector.
Nothing here knows which method it trains.
"""

from __future__ import annotations

from fusion_ui.train.answers import train_on_answers
from fusion_ui.train.lm_loss import answer_loss, collate_scored
from fusion_ui.train.loop import TrainConfig, TrainProgress, TrainResult, batch_order, train_loop

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "answer_loss",
    "batch_order",
    "collate_scored",
    "train_loop",
    "train_on_answers",
]
