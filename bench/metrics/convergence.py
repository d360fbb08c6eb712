"""Convergence speed: first step / examples / training seconds at which a target is reached."""

from __future__ import annotations

from typing import Any, Sequence


def first_reached(history: Sequence[dict[str, Any]], key: str, target: float | None,
                  *, higher_is_better: bool) -> dict[str, Any] | None:
    """The first eval row whose ``key`` reaches ``target`` (None if never, or no target)."""
    if target is None:
        return None
    for row in history:
        value = row.get(key)
        if value is None:
            continue
        if (value >= target) if higher_is_better else (value <= target):
            return row
    return None


def convergence_summary(history: Sequence[dict[str, Any]], *, target_test_accuracy: float | None,
                        target_train_loss: float | None,
                        target_test_loss: float | None = None) -> dict[str, Any]:
    """Steps, examples and seconds to the test-accuracy, train-loss and test-loss targets (null
    if unreached); for the test loss also tokens (language data), the Shallue et al. / Zhang et
    al. steps-to-result definition: the first evaluation at or below the target."""
    acc = first_reached(history, "test_accuracy", target_test_accuracy, higher_is_better=True)
    loss = first_reached(history, "train_loss", target_train_loss, higher_is_better=False)
    test = first_reached(history, "test_loss", target_test_loss, higher_is_better=False)
    return {
        "target_test_accuracy": target_test_accuracy,
        "steps_to_target": acc["step"] if acc else None,
        "examples_to_target": acc["examples"] if acc else None,
        "seconds_to_target": acc["train_seconds"] if acc else None,
        "target_train_loss": target_train_loss,
        "steps_to_train_loss": loss["step"] if loss else None,
        "examples_to_train_loss": loss["examples"] if loss else None,
        "seconds_to_train_loss": loss["train_seconds"] if loss else None,
        "target_test_loss": target_test_loss,
        "steps_to_test_loss": test["step"] if test else None,
        "examples_to_test_loss": test["examples"] if test else None,
        "tokens_to_test_loss": test.get("tokens") if test else None,
        "seconds_to_test_loss": test["train_seconds"] if test else None,
    }
