"""The generalization gap, from full-set train and test evaluations."""

from __future__ import annotations


def generalization_gap(train_loss: float, train_accuracy: float, test_loss: float,
                       test_accuracy: float) -> dict[str, float]:
    """gap_loss = test - train loss; gap_accuracy = train - test accuracy (positive = overfit)."""
    return {"gap_loss": test_loss - train_loss, "gap_accuracy": train_accuracy - test_accuracy}
