"""Training visibility: JSON-lines event log, TensorBoard scalars and the per-epoch progress bar."""
import json
import math
import os
import sys

import tensorflow as tf

EVENTS_FILE = "events.jsonl"

# Scalars written to TensorBoard, per record type: record key -> summary tag.
_TENSORBOARD_SKIP = {"event", "epoch", "step", "phase", "ccp_action", "stop_reason"}


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class EventLog:
    """``log_dir/events.jsonl`` (one JSON record a line) plus TensorBoard scalars.

    Records are dicts with an ``"event"`` key (``"epoch"``, ``"projection"``, ``"proxy_init"``,
    ``"lr"``, ``"stop"``) and an ``"epoch"`` key. On resume, records of epochs after the
    checkpoint being resumed are dropped (they belong to the lost part of the run).

    Args:
      log_dir: folder, or None (records are then only kept in memory).
      resume_epoch: the epoch of the restored checkpoint (0 for a fresh run).
    """

    def __init__(self, log_dir, resume_epoch=0):
        self.records = []
        self.path = None
        self._writer = None
        if not log_dir:
            return
        os.makedirs(log_dir, exist_ok=True)
        self.path = os.path.join(log_dir, EVENTS_FILE)
        if os.path.exists(self.path):
            with open(self.path) as handle:
                for line in handle:
                    line = line.strip()
                    if not line:
                        continue
                    record = json.loads(line)
                    if resume_epoch > 0 and record.get("epoch", 0) <= resume_epoch:
                        self.records.append(record)
        with open(self.path, "w") as handle:
            for record in self.records:
                handle.write(json.dumps(record) + "\n")
        self._writer = tf.summary.create_file_writer(log_dir)

    def of_type(self, event):
        """The records whose ``"event"`` is ``event``, in order."""
        return [r for r in self.records if r.get("event") == event]

    def write(self, record):
        """Appends one record (JSON) and writes its numeric fields as TensorBoard scalars."""
        record = {k: _json_value(v) for k, v in record.items()}
        self.records.append(record)
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        kind = record.get("event", "event")
        with self._writer.as_default(step=int(record.get("epoch", 0))):
            for key, value in record.items():
                if key in _TENSORBOARD_SKIP or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)) and value is not None:
                    tf.summary.scalar(f"{kind}/{key}", value)
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ProgressBar:
    """A tqdm bar for one epoch on stderr (steps/s and the latest loss terms); no-op if disabled."""

    def __init__(self, total, description, enabled=True):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=description, unit="step", leave=False,
                             dynamic_ncols=True, file=sys.stderr)

    def update(self, terms, steps=1):
        """Advances by ``steps`` steps showing ``terms`` (dict of floats) as the postfix."""
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
            self._bar.update(steps)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
