"""One experiment's configuration: a frozen dataclass that is also the absl flag schema.

Every field of :class:`ExperimentConfig` becomes a command-line flag of ``experiments/run.py``
with the same name, default and help text, so flags, flagfiles, tests and ``config.json`` all
speak the same vocabulary. :func:`validate` rejects inconsistent combinations with a message
that names the flags involved.
"""
import dataclasses
import json
import os
from typing import Tuple

DATASETS = ("digits", "cub", "cars196", "sop", "inshop")
BACKBONES = ("small_cnn", "bn_inception", "resnet50")
PAIR_LOSSES = ("contrastive", "cosine_contrastive", "triplet", "multi_similarity", "margin")
PROXY_LOSSES = ("proxy_anchor", "proxy_nca", "soft_triple")
LOSSES = PAIR_LOSSES + PROXY_LOSSES
LR_SCHEDULES = ("constant", "plateau", "exponential")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def _field(default, help_text, choices=None):
    metadata = {"help": help_text}
    if choices is not None:
        metadata["choices"] = choices
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    # Data (SPEC §6-§7).
    dataset: str = _field("digits", "Benchmark data set.", DATASETS)
    data_dir: str = _field("", "Folder of the data set (not needed for digits).")
    image_size: int = _field(0, "Input side in pixels; 0 = 227 (ImageNet backbones) or 32 (small_cnn).")
    min_crop_area: float = _field(0.16, "Smallest area fraction of the training random crop.")
    flip: bool = _field(True, "Random horizontal flips during training.")
    cache_images: bool = _field(False, "Cache the encoded image files in memory (tf.data).")
    # Model (SPEC §1).
    backbone: str = _field("small_cnn", "Backbone network.", BACKBONES)
    weights: str = _field("none", "'none' (from scratch), 'imagenet', or a path to a weight file.")
    embedding_size: int = _field(128, "Embedding dimension D of each fold model.")
    pooling: str = _field("avg", "Global pooling: avg, max or avg+max.", ("avg", "max", "avg+max"))
    freeze_batchnorm: str = _field(
        "auto", "Freeze BatchNorm: auto (when pretrained), true, false.", ("auto", "true", "false")
    )
    # Loss (SPEC §4).
    loss: str = _field("contrastive", "Base loss.", LOSSES)
    pos_margin: float = _field(0.0, "C2 positive margin m+.")
    neg_margin: float = _field(0.3841, "C2 negative margin m-.")
    cosine_margin: float = _field(0.5, "C1 margin.")
    triplet_margin: float = _field(0.0961, "Triplet margin.")
    ms_alpha: float = _field(2.0, "Multi-similarity alpha.")
    ms_beta: float = _field(40.0, "Multi-similarity beta.")
    ms_base: float = _field(0.5, "Multi-similarity lambda (base similarity).")
    ms_mining: bool = _field(False, "Multi-similarity pair mining (epsilon 0.1).")
    margin_alpha: float = _field(0.2, "Margin loss margin alpha.")
    margin_beta: float = _field(1.2, "Margin loss initial beta.")
    proxy_anchor_margin: float = _field(0.1, "ProxyAnchor delta.")
    proxy_anchor_alpha: float = _field(32.0, "ProxyAnchor alpha.")
    proxy_nca_temperature: float = _field(0.1, "ProxyNCA++ temperature.")
    soft_triple_lambda: float = _field(20.0, "SoftTriple lambda.")
    soft_triple_gamma: float = _field(0.1, "SoftTriple gamma.")
    soft_triple_tau: float = _field(0.2, "SoftTriple tau (center regularizer weight).")
    soft_triple_margin: float = _field(0.01, "SoftTriple delta (margin).")
    soft_triple_centers: int = _field(10, "SoftTriple centers per class.")
    # CCP (SPEC §4-§5).
    ccp: bool = _field(False, "Train with chance-constrained proxies (CCP).")
    ccp_proxies_per_class: int = _field(8, "K, proxies per class.")
    ccp_pool_size: int = _field(12, "b, candidate embeddings per class for the projection.")
    ccp_lambda: float = _field(2e-4, "lambda_0 of the proximal term.")
    ccp_decay: float = _field(1.0, "Decay of lambda per problem instance.")
    ccp_patience: int = _field(3, "Epochs without MAP@R improvement that end a problem instance.")
    ccp_min_iterations: int = _field(1, "Minimum epochs per problem instance.")
    ccp_pair_weight: float = _field(0.1, "Weight of the batch-vs-batch term.")
    ccp_proxy_weight: float = _field(1.0, "Weight of the batch-vs-proxy term.")
    ccp_random_init: bool = _field(False, "Random initial proxies instead of greedy k-center.")
    ccp_monitor_lag: int = _field(0, "1 = react to the previous epoch's MAP@R like the reference.")
    # Cross-batch memory (SPEC §4).
    xbm: bool = _field(False, "Wrap the loss in a cross-batch memory.")
    xbm_memory_batches: int = _field(25, "Memory size in batches.")
    xbm_start_at: int = _field(1000, "Steps before the memory term starts.")
    xbm_weight: float = _field(1.0, "Weight of the batch-vs-memory term.")
    xbm_batch_weight: float = _field(1.0, "Weight of the batch-vs-batch term.")
    # Batches (SPEC §6).
    classes_per_batch: int = _field(8, "Classes in each training batch.")
    samples_per_class: int = _field(4, "Images per class in each training batch.")
    # Optimization (SPEC §6).
    learning_rate: float = _field(1e-5, "Adam learning rate.")
    adam_beta_1: float = _field(0.9, "Adam beta_1.")
    adam_beta_2: float = _field(0.999, "Adam beta_2.")
    weight_decay: float = _field(1e-4, "Weight decay added to gradients of non-BatchNorm weights.")
    clip_norm: float = _field(10.0, "Gradient clipping by global norm (0 = off).")
    clip_value: float = _field(10.0, "Gradient clipping by value (0 = off).")
    proxy_lr_multiplier: float = _field(1.0, "Learning-rate multiplier of proxy variables.")
    lr_schedule: str = _field("constant", "Learning-rate schedule.", LR_SCHEDULES)
    lr_decay_rate: float = _field(0.5, "Factor of the plateau/exponential schedules.")
    lr_decay_steps: int = _field(1000, "Steps per decay of the exponential schedule.")
    lr_plateau_patience: int = _field(10, "Epochs without improvement before a plateau decay.")
    warmup_epochs: int = _field(0, "Epochs training only the embedding layer (and proxies).")
    steps_per_epoch: int = _field(25, "Training steps between validations.")
    max_epochs: int = _field(10000, "Upper bound on epochs per fold.")
    patience: int = _field(60, "Early-stopping patience in epochs (validation MAP@R).")
    min_delta: float = _field(1e-5, "Smallest MAP@R gain that counts as an improvement.")
    # Protocol (SPEC §6).
    folds: int = _field(4, "4 = MLRC protocol (4 class folds), 1 = conventional (train on all).")
    repeats: int = _field(1, "Independent repetitions with seeds seed, seed+1, ...")
    seed: int = _field(0, "Random seed.")
    eval_batch_size: int = _field(128, "Batch size of embedding passes.")
    recall_at: Tuple[int, ...] = _field((1, 2, 4, 8), "Ranks of Recall@K.")
    compute_nmi: bool = _field(True, "Compute NMI (k-means) on the test set.")
    # Output and execution.
    output_dir: str = _field("runs/experiment", "Folder for checkpoints, logs, results, exports.")
    export: bool = _field(True, "Export per-fold and ensemble SavedModel embedders.")
    report: bool = _field(True, "Write plots and report.md.")
    tsne_points: int = _field(1500, "Test embeddings shown in the t-SNE plot (0 = no t-SNE).")
    precision: str = _field("float32", "Compute precision policy.", PRECISIONS)
    strategy: str = _field("default", "tf.distribute strategy.", STRATEGIES)
    tpu: str = _field("", "TPU address for --strategy=tpu.")
    progress_bar: bool = _field(True, "Show a progress bar per epoch.")

    @property
    def resolved_image_size(self):
        if self.image_size:
            return self.image_size
        return 32 if self.backbone == "small_cnn" else 227

    @property
    def batch_size(self):
        return self.classes_per_batch * self.samples_per_class

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


class ConfigError(ValueError):
    """An inconsistent or invalid experiment configuration (names the flags involved)."""


def validate(config):
    """Checks the configuration; raises ConfigError naming the offending flags."""
    problems = []
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        value = getattr(config, field.name)
        if choices is not None and value not in choices:
            problems.append(f"--{field.name}={value!r} is not one of {', '.join(choices)}")
    if config.dataset != "digits" and not config.data_dir:
        problems.append(f"--dataset={config.dataset} needs --data_dir (the data set's folder)")
    if config.data_dir and config.dataset != "digits" and not os.path.isdir(config.data_dir):
        problems.append(f"--data_dir={config.data_dir!r} is not an existing folder")
    if config.ccp and config.loss in PROXY_LOSSES:
        problems.append(
            f"--ccp wraps a pair loss ({', '.join(PAIR_LOSSES)}); --loss={config.loss} already "
            "owns proxies"
        )
    if config.xbm and config.loss in PROXY_LOSSES:
        problems.append(f"--xbm needs a pair loss, not --loss={config.loss}")
    if config.loss in PAIR_LOSSES and config.samples_per_class < 2:
        problems.append(
            f"--loss={config.loss} needs positive pairs in a batch: --samples_per_class must be >= 2"
        )
    positive_ints = (
        "embedding_size", "classes_per_batch", "samples_per_class", "steps_per_epoch",
        "max_epochs", "patience", "folds", "repeats", "eval_batch_size",
        "ccp_proxies_per_class", "ccp_pool_size", "ccp_patience", "xbm_memory_batches",
        "soft_triple_centers",
    )
    for name in positive_ints:
        if getattr(config, name) < 1:
            problems.append(f"--{name} must be >= 1, got {getattr(config, name)}")
    if config.image_size < 0:
        problems.append(f"--image_size must be >= 0, got {config.image_size}")
    if not 0.0 < config.min_crop_area <= 1.0:
        problems.append(f"--min_crop_area must be in (0, 1], got {config.min_crop_area}")
    if config.learning_rate <= 0:
        problems.append(f"--learning_rate must be > 0, got {config.learning_rate}")
    if config.ccp_monitor_lag not in (0, 1):
        problems.append(f"--ccp_monitor_lag must be 0 or 1, got {config.ccp_monitor_lag}")
    if config.strategy == "tpu" and not config.tpu:
        problems.append("--strategy=tpu needs --tpu (the TPU name or address)")
    if not config.recall_at or any(k < 1 for k in config.recall_at):
        problems.append(f"--recall_at must be positive integers, got {config.recall_at}")
    if config.backbone == "small_cnn" and config.weights not in ("none", ""):
        problems.append("--backbone=small_cnn has no pretrained weights: use --weights=none")
    if problems:
        raise ConfigError("Invalid experiment flags:\n  " + "\n  ".join(problems))
    return config
