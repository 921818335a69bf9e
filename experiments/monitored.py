"""A Trainer whose early stopping, plateau schedule and CCP schedule follow a chosen metric.

``ccp.training.Trainer`` drives its decisions with the validation MAP@R of one set (query set =
reference set). The reference's conventional configs (SPEC §6 "Conventional protocol") instead
monitor Recall@1 of the *test* split, which for In-shop is a query set against a gallery.
:class:`MonitoredTrainer` keeps the Trainer's loop and replaces only what one validation pass
returns: the metric named ``monitor`` (``precision_at_1`` is Recall@1), computed on
``validation_data`` (a dataset) or on a ``(query dataset, reference dataset)`` pair.
"""
from absl import logging

import ccp
from ccp.training import epoch as epoch_lib

TITLES = {"map_at_r": "MAP@R", "precision_at_1": "Recall@1"}


class MonitoredTrainer(ccp.training.Trainer):
    """:class:`ccp.training.Trainer` monitoring ``monitor`` of the validation metrics.

    Args (besides the Trainer's):
      monitor: a key of the validation metrics (``map_at_r``, ``precision_at_1``, ...).
      monitored_split: the name of the monitored split in the logs ("validation", "test").
    The epoch records keep every metric (``val_*``, ``map_at_r``) and add ``monitor`` and
    ``monitored_value``; ``best_map_at_r`` and ``fit()["best_metric"]`` hold the best value of
    the monitored metric.
    """

    def __init__(self, *args, monitor="map_at_r", monitored_split="validation", **kwargs):
        super().__init__(*args, **kwargs)
        self.monitor, self.monitored_split = monitor, monitored_split

    def evaluate(self, dataset):
        """Metrics of a dataset (query = reference) or of a ``(query, reference)`` pair:
        ``{metric: float}`` plus ``embedding_spread`` (of the query set)."""
        if not isinstance(dataset, tuple):
            return super().evaluate(dataset)
        query_data, reference_data = dataset
        return epoch_lib.validation_metrics(self.model, query_data, self.strategy,
                                            self.recall_at, reference_data)

    def validate(self, validation_data, record):
        metric = super().validate(validation_data, record)
        if validation_data is None:
            return metric
        value = record[f"val_{self.monitor}"]
        record.update({"monitor": self.monitor, "monitored_value": value})
        logging.info("epoch %d: monitored %s %s %.4f (drives early stopping, the learning-rate "
                     "plateau and the CCP schedule)", record["epoch"], self.monitored_split,
                     TITLES.get(self.monitor, self.monitor), value)
        return value
