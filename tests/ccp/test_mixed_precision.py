"""Mixed precision (issue 7): training runs under mixed_float16 / mixed_bfloat16, losses and
metrics stay float32, and the trained model's validation MAP@R matches float32 training."""
import keras
import numpy as np
import pytest

from ccp import metrics, training
from test_training import make_loss, make_model, make_trainer, train_dataset_fn, validation_data


def _train(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = make_model(batchnorm=False)
        loss = make_loss()
        trainer = make_trainer(model=model, loss=loss, learning_rate=0.01, steps_per_epoch=10,
                               max_epochs=4, patience=10)
        untrained = trainer.evaluate(validation_data())
        terms = loss.loss_terms(np.zeros(4, np.int32), np.ones((4, 4), np.float16))
        result = trainer.fit(train_dataset_fn(), validation_data=validation_data())
        embeddings, labels = training.embed_dataset(model, validation_data())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert terms["loss"].dtype == "float32" and embeddings.dtype == np.float32
    return untrained, result, metrics.retrieval_metrics(embeddings, labels)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_matches_float32(policy):
    _, reference, ref_metrics = _train("float32")
    untrained, result, mixed_metrics = _train(policy)
    assert all(np.isfinite(r["loss"]) for r in result["history"])
    assert result["best_metric"] > untrained["map_at_r"]  # it learned
    for name in ("map_at_r", "precision_at_1", "r_precision"):
        assert mixed_metrics[name] == pytest.approx(ref_metrics[name], abs=0.05), name
