"""How well the CCP proxies cover their classes' TRAINING embeddings, measured over training.

The projection logs the covering radius of the pool greedy k-center picked from, which is near
0 by construction (the proxies are pool members). What a reader wants is the radius of each
training class's embeddings (a fixed, seeded subsample of the fold's training split, evaluation
transform) by that class's proxies: ``r_c = max_{x in class c} min_k ||x - p_{c,k}||`` in the
raw embedding space greedy k-center works in (SPEC §5). :class:`CoveringRadiusMonitor` measures
it after every epoch (so right after every projection) as a ``Trainer.fit`` callback, and once
more on the restored best weights; the series is kept in ``logs/covering_radius.jsonl``.
Raw norms grow during training, so each record also holds the radius in the Lipschitz-normalized
space the loss uses (``normalized_mean`` / ``normalized_max``, comparable across epochs) and
the nearest-proxy accuracy there (how often a training image's nearest proxy of the whole bank
is one of its own class's; ``chance`` = 1 / C).
"""
import json
import os

import numpy as np

import ccp
from experiments import builders

RADIUS_FILE = "covering_radius.jsonl"
_CHUNK_ROWS = 1024


def class_covering_radii(embeddings, class_indices, proxies_by_class):
    """Per class, the largest distance of its embeddings to the nearest of its proxies.

    Args:
      embeddings: float ``[N, D]``.
      class_indices: int ``[N]`` in ``[0, C)``, the class index of each embedding (the proxy
        bank's class order).
      proxies_by_class: float ``[C, K, D]``.
    Returns:
      float64 ``[C]``: ``max_{i: y_i = c} min_k ||x_i - p_{c,k}||``; NaN for a class without
      embeddings.
    """
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(class_indices)
    proxies = np.asarray(proxies_by_class, np.float64)
    if x.ndim != 2 or proxies.ndim != 3 or y.shape != (x.shape[0],) or (
            x.shape[1] != proxies.shape[2]):
        raise ValueError(f"class_covering_radii expects embeddings [N, D], class_indices [N] and "
                         f"proxies [C, K, D]; got {x.shape}, {y.shape} and {proxies.shape}")
    num_classes = proxies.shape[0]
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes}), got "
                         f"[{y.min()}, {y.max()}]")
    nearest = np.empty(x.shape[0])
    for start in range(0, x.shape[0], _CHUNK_ROWS):  # [chunk, K, D] differences at a time
        rows = slice(start, start + _CHUNK_ROWS)
        diff = x[rows, None, :] - proxies[y[rows]]
        nearest[rows] = np.sqrt(np.min(np.sum(diff * diff, axis=-1), axis=1))
    radii = np.full(num_classes, -np.inf)
    np.maximum.at(radii, y, nearest)
    radii[np.isneginf(radii)] = np.nan
    return radii


def nearest_proxy_accuracy(embeddings, class_indices, proxies_by_class):
    """Fraction of embeddings whose nearest proxy in the whole bank is one of their class's.

    Args:
      embeddings: float ``[N, D]``; class_indices: int ``[N]`` in ``[0, C)``;
      proxies_by_class: float ``[C, K, D]``.
    Returns:
      float in [0, 1] (NaN for N = 0): ``mean_i [class(argmin_p ||x_i - p||) = y_i]``, ties to
      the lowest bank row (classes in order, then k); chance is about ``1 / C``.
    """
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(class_indices)
    proxies = np.asarray(proxies_by_class, np.float64)
    num_classes, per_class = proxies.shape[:2]
    bank = proxies.reshape(num_classes * per_class, -1)
    bank_sq = np.sum(bank * bank, axis=1)
    hits = 0
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        rows = x[start:start + _CHUNK_ROWS]
        # ||x - p||^2 up to the row constant ||x||^2, which does not change the argmin
        nearest = np.argmin(bank_sq[None, :] - 2.0 * rows @ bank.T, axis=1)
        hits += int(np.sum(nearest // per_class == y[start:start + _CHUNK_ROWS]))
    return hits / x.shape[0] if x.shape[0] else float("nan")


def summarize_radii(radii):
    """``{"mean", "max", "classes"}`` of per-class radii ``[C]`` (classes without data left out)."""
    present = np.asarray(radii, np.float64)
    present = present[np.isfinite(present)]
    if not present.size:
        return {"mean": None, "max": None, "classes": 0}
    return {"mean": float(present.mean()), "max": float(present.max()),
            "classes": int(present.size)}


def training_sample(records, size, seed):
    """A fixed subsample of ``records`` (``min(size, N)`` records, in record order) drawn from
    ``seed`` only, so every epoch, every rerun and a resumed run measure the same images."""
    size = min(int(size), len(records))
    chosen = np.random.default_rng([int(seed), 0x5EED]).permutation(len(records))[:size]
    return records.select(np.sort(chosen))


class CoveringRadiusMonitor:
    """``Trainer.fit`` callback: the training classes' covering radius after every epoch.

    Args:
      config: the ExperimentConfig (eval transform and batch size).
      records: the fold's training Records (class index = position in ``records.classes``,
        the proxy bank's order).
      seed: the fold's seed (draws the subsample).
      size: images in the subsample (``--radius_images``).
      proxy_owner: the layer whose ``proxies_by_class() -> [C, K, D]`` are measured.
      log_dir: folder of ``covering_radius.jsonl`` (None = memory only).

    Attributes:
      series: list of ``{"epoch", "point": "epoch"|"final", "projection": bool, "mean", "max",
        "classes", "images", "normalized_mean", "normalized_max", "nearest_proxy_accuracy",
        "chance"}`` records, in order (``mean``/``max`` in raw embedding space).
    """

    def __init__(self, config, records, seed, size, proxy_owner, log_dir=None):
        self.config, self.proxy_owner = config, proxy_owner
        self.classes = records.classes
        self.sample = training_sample(records, size, seed)
        self.path = os.path.join(log_dir, RADIUS_FILE) if log_dir else None
        self.series = []
        if self.path and os.path.exists(self.path):
            with open(self.path) as handle:
                self.series = [json.loads(line) for line in handle if line.strip()]

    def embed(self, model, strategy=None):
        """Raw embeddings ``[n, D]`` and class indices ``[n]`` of the subsample."""
        dataset = builders.eval_dataset(self.config, self.sample)
        embeddings, labels = ccp.training.embed_dataset(model, dataset, strategy=strategy)
        return embeddings, np.searchsorted(self.classes, labels)

    def measure(self, model, epoch, point, projection=False, strategy=None):
        """Measures the current model and proxies; appends (and stores) the record."""
        embeddings, indices = self.embed(model, strategy)
        proxies = np.asarray(self.proxy_owner.proxies_by_class())
        radii = class_covering_radii(embeddings, indices, proxies)
        # The space the loss works in (SPEC §2): comparable across epochs, unlike raw norms.
        unit_embeddings = ccp.metrics.lipschitz_normalize(np.asarray(embeddings, np.float32))
        unit_proxies = ccp.metrics.lipschitz_normalize(
            proxies.reshape(-1, proxies.shape[-1]).astype(np.float32)).reshape(proxies.shape)
        normalized = summarize_radii(class_covering_radii(unit_embeddings, indices,
                                                          unit_proxies))
        record = {"epoch": int(epoch), "point": point, "projection": bool(projection),
                  **summarize_radii(radii), "images": int(len(indices)),
                  "normalized_mean": normalized["mean"], "normalized_max": normalized["max"],
                  "nearest_proxy_accuracy": nearest_proxy_accuracy(unit_embeddings, indices,
                                                                   unit_proxies),
                  "chance": 1.0 / proxies.shape[0]}
        # A resumed run re-measures from its checkpoint on: drop what it will redo.
        self.series = [r for r in self.series if r["point"] == "epoch" and (
            point == "final" or r["epoch"] < record["epoch"])]
        self.series.append(record)
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in self.series)
            os.replace(tmp, self.path)
        return record

    def __call__(self, trainer, epoch_record):
        """After each epoch (its projection, if any, already done)."""
        self.measure(trainer.model, epoch_record["epoch"], "epoch",
                     projection=epoch_record.get("ccp_action") == ccp.projection.PROJECT,
                     strategy=trainer.strategy)

    def finish(self, model, epoch):
        """The final point: the model and proxies fit() returned (the best snapshot), recorded
        at ``epoch``, the best epoch."""
        return self.measure(model, epoch, "final")
