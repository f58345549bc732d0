"""Early stopping's rule on made-up validation sequences: the metric decides, the validation loss breaks ties
and keeps a still-learning run going (eval/early_stopping.py)."""

from __future__ import annotations

import torch

from tunelab.eval.early_stopping import BestWeights


def watch(metric: str, patience: int, validations: list[tuple[float, float]]) -> tuple[BestWeights, int | None]:
    """Feed (metric, eval_loss) validations at steps 1, 2, ...; the step training was told to stop at."""
    best, model = BestWeights(metric, patience), torch.nn.Linear(1, 1)
    for step, (value, loss) in enumerate(validations, start=1):
        with torch.no_grad():
            model.weight.fill_(step)  # the weights at each step are tagged by the step
        if best.observe(step, {metric: value, "eval_loss": loss}, model):
            return best, step
    return best, None


def test_a_flat_metric_with_a_falling_loss_keeps_training_and_the_lowest_loss_wins_the_tie():
    # accuracy stands at 0.75 from step 2 on (a small validation set) while the loss keeps falling
    best, stopped = watch("accuracy", 2, [(0.5, 1.0), (0.75, 0.8), (0.75, 0.6), (0.75, 0.5), (0.75, 0.4)])
    assert stopped is None and best.best_step == 5 and best.best_value == 0.75
    model = torch.nn.Linear(1, 1)
    assert best.restore(model) and model.weight.item() == 5.0


def test_neither_metric_nor_loss_improving_stops_after_patience():
    best, stopped = watch("accuracy", 2, [(0.5, 1.0), (0.75, 0.8), (0.70, 0.9), (0.75, 0.85)])
    assert stopped == 4 and best.best_step == 2 and best.stopped_at == 4


def test_a_new_low_loss_with_a_worse_metric_resets_patience_but_does_not_move_the_best():
    best, stopped = watch("accuracy", 2, [(0.8, 1.0), (0.7, 0.9), (0.7, 0.95), (0.7, 0.8), (0.6, 0.85), (0.6, 0.9)])
    assert best.best_step == 1 and stopped == 6  # steps 2 and 4 set new lows; 3, then 5 and 6 did not


def test_a_loss_change_below_a_tenth_of_a_percent_is_not_learning():
    best, stopped = watch("token_f1", 1, [(0.4, 1.0), (0.4, 0.9995)])
    assert stopped == 2 and best.best_step == 1


def test_watching_the_loss_itself_needs_a_strictly_lower_loss():
    best, stopped = watch("eval_loss", 2, [(1.0, 1.0), (0.9, 0.9), (0.9, 0.9), (0.95, 0.95)])
    assert stopped == 4 and best.best_step == 2
