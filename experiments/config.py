"""One experiment's configuration: frozen dataclasses grouped by concern, also the flag schema.

:class:`ExperimentConfig` holds one group per concern (``data``, ``model``, ``loss``, ``ccp``,
``xbm``, ``optimizer``, ``protocol``, ``run``). Every group field is one command-line flag of
``experiments/run.py``; the flag names are flat (``--ccp_pool_size`` is ``config.ccp.pool_size``)
and written in the field's metadata when they differ from the field name. Defaults come from
``ccp.defaults`` (the library's single source), choices from ``experiments.registry``.
:func:`validate` rejects inconsistent combinations that need no data, with a message naming the
flags. Nothing here imports TensorFlow.
"""
import dataclasses
import json
import os
from typing import Tuple

from ccp import defaults as D
from experiments import registry


class UserError(Exception):
    """A problem the user can fix (flags, data, output folder); the CLI prints it in one line."""


class ConfigError(UserError, ValueError):
    """An inconsistent or invalid experiment configuration (names the flags involved)."""


class DataError(UserError, ValueError):
    """The data set on disk does not match what the loader expects (names the file)."""


def _field(default, help_text, choices=None, flag=None):
    metadata = {"help": help_text}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if flag is not None:
        metadata["flag"] = flag
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """SPEC §6-§7: the data set, its images and the training batches."""

    dataset: str = _field("digits", "Benchmark data set.", registry.DATASETS)
    data_dir: str = _field("", "Folder of the data set (not needed for digits).")
    image_size: int = _field(0, "Input side in pixels; 0 = the backbone's default (227, or 32 "
                                "for small_cnn).")
    min_crop_area: float = _field(D.MIN_CROP_AREA, "Smallest area fraction of the training "
                                                   "random crop.")
    flip: bool = _field(True, "Random horizontal flips during training.")
    cache_images: bool = _field(False, "Cache the encoded image files in memory (tf.data).")
    data_source: str = _field("files", "Read the data set from its files, or from a prepared "
                                       "TFDS copy in --data_dir.", registry.DATA_SOURCES)
    input_pipeline: str = _field("ingraph", "Batch sampling: in-graph (tf.data/TF ops only, "
                                            "TPU-ready), or the numpy sampler through a Python "
                                            "generator (the sequence of runs before 2026-12).",
                                 registry.INPUT_PIPELINES)
    skip_corrupt: bool = _field(False, "Skip (and list) images that do not decode instead of "
                                       "failing.")
    allow_partial: bool = _field(False, "Accept a data set copy whose counts differ from the "
                                        "published ones.")
    classes_per_batch: int = _field(D.CLASSES_PER_BATCH, "Classes in each training batch.")
    cub_variant: str = _field("standard", "CUB variant of the reference: label noise on the train "
                                          "split (0.1/0.2/0.4) or the closed-set split.",
                              ("standard", "closed", "low_noise", "medium_noise", "high_noise"))
    label_noise_seed: int = _field(0, "Seed of the CUB label noise (--cub_variant=*_noise).")
    crop_to_bbox: bool = _field(False, "Crop CUB / Cars196 images to their bounding boxes.")
    samples_per_class: int = _field(D.SAMPLES_PER_CLASS, "Images per class in each training "
                                                         "batch.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """SPEC §1: backbone, pooling and embedding head."""

    backbone: str = _field("small_cnn", "Backbone network.", registry.BACKBONES)
    weights: str = _field("none", "'none' (from scratch), 'imagenet' (BN-Inception, ResNet-50), "
                                  "'symbols_pretrained' (small_cnn pretrained on the symbols set, "
                                  "disjoint from glyphs), or a weight file of the backbone or of "
                                  "a whole embedding model.")
    embedding_size: int = _field(D.EMBEDDING_SIZE, "Embedding dimension D of each fold model.")
    embedding_bias: bool = _field(False, "Give the Dense embedding head a bias (the reference's "
                                         "head has none).")
    pooling: str = _field(D.POOLING, "Global pooling.", registry.POOLINGS)
    freeze_batchnorm: str = _field("auto", "Freeze BatchNorm: auto (when pretrained), true, "
                                           "false.", registry.FREEZE_BATCHNORM)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """SPEC §4: the base loss and the hyperparameters of every loss."""

    name: str = _field("contrastive", "Base loss.", registry.LOSSES, flag="loss")
    pos_margin: float = _field(D.CONTRASTIVE_POS_MARGIN, "C2 positive margin m+.")
    neg_margin: float = _field(D.CONTRASTIVE_NEG_MARGIN, "C2 negative margin m-.")
    cosine_margin: float = _field(D.COSINE_MARGIN, "C1 margin.")
    triplet_margin: float = _field(D.TRIPLET_MARGIN, "Triplet margin.")
    ms_alpha: float = _field(D.MS_ALPHA, "Multi-similarity alpha.")
    ms_beta: float = _field(D.MS_BETA, "Multi-similarity beta.")
    ms_base: float = _field(D.MS_BASE, "Multi-similarity lambda (base similarity).")
    ms_mining: bool = _field(D.MS_MINING, "Multi-similarity pair mining (epsilon 0.1).")
    margin_alpha: float = _field(D.MARGIN_ALPHA, "Margin loss margin alpha.")
    margin_beta: float = _field(D.MARGIN_BETA_INIT, "Margin loss initial beta.")
    proxy_anchor_margin: float = _field(D.PROXY_ANCHOR_MARGIN, "ProxyAnchor delta.")
    proxy_anchor_alpha: float = _field(D.PROXY_ANCHOR_ALPHA, "ProxyAnchor alpha.")
    proxy_nca_temperature: float = _field(D.PROXY_NCA_TEMPERATURE, "ProxyNCA++ temperature.")
    proxy_nca_proxies_per_class: int = _field(D.PROXY_NCA_PROXIES_PER_CLASS, "ProxyNCA++ "
                                              "proxies per class (a class's probability sums "
                                              "their softmax mass).")
    soft_triple_lambda: float = _field(D.SOFT_TRIPLE_LAMBDA, "SoftTriple lambda.")
    soft_triple_gamma: float = _field(D.SOFT_TRIPLE_GAMMA, "SoftTriple gamma.")
    soft_triple_tau: float = _field(D.SOFT_TRIPLE_TAU, "SoftTriple tau (center regularizer).")
    soft_triple_margin: float = _field(D.SOFT_TRIPLE_MARGIN, "SoftTriple delta (margin).")
    soft_triple_centers: int = _field(D.SOFT_TRIPLE_CENTERS, "SoftTriple centers per class.")
    circle_margin: float = _field(D.CIRCLE_MARGIN, "Circle loss margin m.")
    circle_gamma: float = _field(D.CIRCLE_GAMMA, "Circle loss scale gamma.")
    fastap_num_bins: int = _field(D.FASTAP_NUM_BINS, "FastAP histogram bins.")
    rll_boundary: float = _field(D.RLL_BOUNDARY, "Ranked-list loss boundary alpha.")
    rll_margin: float = _field(D.RLL_MARGIN, "Ranked-list loss margin m.")
    rll_neg_temperature: float = _field(D.RLL_NEG_TEMPERATURE, "Ranked-list loss T_n.")
    rll_pos_temperature: float = _field(D.RLL_POS_TEMPERATURE, "Ranked-list loss T_p.")
    rll_neg_weight: float = _field(D.RLL_NEG_WEIGHT, "Ranked-list loss lambda.")
    distance: str = _field(D.DISTANCE, "Distance of contrastive, triplet, margin and ranked-list "
                                       "losses (cosine: -x.y, the reference's cos).",
                           registry.DISTANCES)
    normalization: str = _field(D.NORMALIZATION, "Normalization of embeddings and proxies in "
                                                 "every loss: lipschitz (x / max(|x|, 1)) or l2 "
                                                 "(x / |x|, the reference's lipschitz_cont: "
                                                 "false).", registry.NORMALIZATIONS)
    rho_p_switch: float = _field(D.RHO_P_SWITCH, "rho-regularization switch probability of "
                                                 "triplet and margin losses (paper: 0.2).")
    miner: str = _field(registry.NO_MINER, "Pair miner of every pair loss.", registry.MINERS)
    average_nonzero_only: bool = _field(D.AVERAGE_NONZERO_ONLY, "Average over non-zero terms; "
                                        "false = over all terms (contrastive, triplet, margin).")
    normalized_softmax_temperature: float = _field(D.NORMALIZED_SOFTMAX_TEMPERATURE,
                                                   "Normalized softmax temperature.")
    virtual_softmax_temperature: float = _field(D.VIRTUAL_SOFTMAX_TEMPERATURE,
                                                "Virtual softmax temperature.")
    virtual_softmax_margin: float = _field(D.VIRTUAL_SOFTMAX_MARGIN, "Virtual softmax margin.")
    proxy_synthesis: bool = _field(False, "Wrap a proxy loss in Proxy Synthesis.")
    proxy_synthesis_alpha: float = _field(D.PROXY_SYNTHESIS_ALPHA, "Proxy Synthesis Beta "
                                                                   "parameter alpha.")
    proxy_synthesis_mu: float = _field(D.PROXY_SYNTHESIS_MU, "Proxy Synthesis ratio mu.")
    mdr: bool = _field(False, "Add multi-level distance regularization (MDR) to the loss.")
    mdr_weight: float = _field(D.MDR_WEIGHT, "MDR weight.")
    mdr_level_penalty: float = _field(D.MDR_LEVEL_PENALTY, "MDR level penalty.")


@dataclasses.dataclass(frozen=True)
class CCPConfig:
    """SPEC §4-§5: chance-constrained proxies and the alternating projection."""

    enabled: bool = _field(False, "Train with chance-constrained proxies (CCP).", flag="ccp")
    proxies_per_class: int = _field(D.CCP_PROXIES_PER_CLASS, "K, proxies per class.",
                                    flag="ccp_proxies_per_class")
    pool_size: int = _field(D.CCP_POOL_SIZE, "b, candidate embeddings per class for the "
                                             "projection.", flag="ccp_pool_size")
    lambda_0: float = _field(D.CCP_LAMBDA, "lambda_0 of the proximal term.",
                             flag="ccp_lambda_0")
    decay: float = _field(D.CCP_DECAY, "Decay of lambda per problem instance.", flag="ccp_decay")
    patience: int = _field(D.CCP_PATIENCE, "Epochs without MAP@R improvement that end a problem "
                                           "instance.", flag="ccp_patience")
    min_epochs_per_instance: int = _field(D.CCP_MIN_EPOCHS_PER_INSTANCE, "Minimum epochs per "
                                          "problem instance.",
                                          flag="ccp_min_epochs_per_instance")
    min_delta: float = _field(D.CCP_MIN_DELTA, "Smallest MAP@R gain that counts as an "
                                               "improvement of a problem instance.",
                              flag="ccp_min_delta")
    pair_weight: float = _field(D.CCP_PAIR_WEIGHT, "Weight of the batch-vs-batch term.",
                                flag="ccp_pair_weight")
    proxy_weight: float = _field(D.CCP_PROXY_WEIGHT, "Weight of the batch-vs-proxy term.",
                                 flag="ccp_proxy_weight")
    random_init: bool = _field(False, "Random initial proxies instead of greedy k-center.",
                               flag="ccp_random_init")
    monitor_lag: int = _field(D.CCP_MONITOR_LAG, "1 = react to the previous epoch's MAP@R like "
                                                 "the reference.", flag="ccp_monitor_lag")
    pool_transform: str = _field("train", "Transform of the proxy-pool images: the training "
                                          "augmentation (the reference's) or the evaluation "
                                          "transform.", registry.POOL_TRANSFORMS,
                                 flag="ccp_pool_transform")
    monitor: str = _field(D.CCP_MONITOR, "Metric the CCP schedule follows: a validation metric "
                                         "(map_at_r, precision_at_1, recall_at_K, r_precision) "
                                         "or loss (minimum).", flag="ccp_monitor")
    fixed_interval: int = _field(D.CCP_FIXED_INTERVAL, "Project every N epochs without early "
                                 "stopping (0 = at instance ends).", flag="ccp_fixed_interval")
    projection_every_steps: int = _field(
        D.CCP_PROJECTION_EVERY_STEPS, "Project after every N training steps (warm-up steps do "
        "not count), mid-epoch if need be, without early stopping; the CCP patience and monitor "
        "are then unused (0 = at instance ends).", flag="ccp_projection_every_steps")
    perturb_noise: float = _field(0.0, "Noise sigma added to w_prev at a projection (x its RMS).",
                                  flag="ccp_perturb_noise")
    normalized_kcenter: bool = _field(False, "Greedy k-center on L2-normalized embeddings.",
                                      flag="ccp_normalized_kcenter")


@dataclasses.dataclass(frozen=True)
class XBMConfig:
    """SPEC §4: cross-batch memory around the loss."""

    enabled: bool = _field(False, "Wrap the loss in a cross-batch memory.", flag="xbm")
    memory_batches: int = _field(D.XBM_MEMORY_BATCHES, "Memory size in batches.",
                                 flag="xbm_memory_batches")
    start_at: int = _field(D.XBM_START_AT, "Steps before the memory term starts.",
                           flag="xbm_start_at")
    memory_weight: float = _field(D.XBM_MEMORY_WEIGHT, "Weight of the batch-vs-memory term.",
                                  flag="xbm_weight")
    batch_weight: float = _field(D.XBM_BATCH_WEIGHT, "Weight of the batch-vs-batch term.",
                                 flag="xbm_batch_weight")
    delay_until_full: bool = _field(True, "Memory term from step start_at + memory size (the "
                                          "reference's timing); false = right after start_at.",
                                    flag="xbm_delay_until_full")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SPEC §6: Adam, gradient transforms and learning-rate schedules."""

    learning_rate: float = _field(D.LEARNING_RATE, "Adam learning rate.")
    adam_beta_1: float = _field(D.ADAM_BETA_1, "Adam beta_1.")
    adam_beta_2: float = _field(D.ADAM_BETA_2, "Adam beta_2.")
    weight_decay: float = _field(D.WEIGHT_DECAY, "Weight decay added to gradients of "
                                                 "non-BatchNorm weights.")
    clip_norm: float = _field(D.CLIP_NORM, "Gradient clipping by global norm (0 = off).")
    clip_value: float = _field(D.CLIP_VALUE, "Gradient clipping by value (0 = off).")
    proxy_lr_multiplier: float = _field(D.PROXY_LR_MULTIPLIER, "Learning-rate multiplier of "
                                                               "proxy variables.")
    lr_schedule: str = _field(D.LR_SCHEDULE, "Learning-rate schedule.", registry.LR_SCHEDULES)
    lr_decay_rate: float = _field(D.LR_EXPONENTIAL_RATE, "Rate of the exponential schedule.")
    lr_decay_steps: int = _field(D.LR_DECAY_STEPS, "Steps per decay of the exponential schedule.")
    lr_plateau_factor: float = _field(D.LR_PLATEAU_FACTOR, "Factor of the plateau schedule.")
    lr_plateau_patience: int = _field(D.LR_PLATEAU_PATIENCE, "Epochs without improvement before "
                                                             "a plateau decay.")
    warmup_epochs: float = _field(float(D.WARMUP_EPOCHS), "Epochs training only the embedding "
                                                          "layer (and proxies); < 1: one "
                                                          "epoch of that fraction of steps.")
    warmup_lr_multiplier: float = _field(D.WARMUP_LR_MULTIPLIER, "Warm-up learning rate = "
                                                                 "--learning_rate x this.")
    warmup_all_layers: bool = _field(D.WARMUP_ALL_LAYERS, "The warm-up trains every layer.")
    optimizer: str = _field(D.OPTIMIZER, "Optimizer (the reference's list).",
                            ("adam", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam",
                             "ftrl"))
    momentum: float = _field(D.SGD_MOMENTUM, "Momentum of --optimizer=sgd or rmsprop.")
    nesterov: bool = _field(D.SGD_NESTEROV, "Nesterov momentum (--optimizer=sgd).")
    rmsprop_rho: float = _field(D.RMSPROP_RHO, "RMSprop rho (--optimizer=rmsprop).")


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """SPEC §6: epochs, early stopping, class folds, repeats, seeds, evaluation."""

    steps_per_epoch: int = _field(D.STEPS_PER_EPOCH, "Training steps between validations.")
    max_epochs: int = _field(D.MAX_EPOCHS, "Upper bound on epochs per fold.")
    patience: int = _field(D.EARLY_STOPPING_PATIENCE, "Early-stopping patience in epochs "
                                                      "(validation MAP@R).")
    min_delta: float = _field(D.EARLY_STOPPING_MIN_DELTA, "Smallest MAP@R gain that counts as "
                                                          "an improvement for early stopping.")
    folds: int = _field(D.FOLDS, "4 = MLRC protocol (4 class folds), 1 = conventional (train "
                                 "on all).")
    repeats: int = _field(D.REPEATS, "Trainings of every fold (seeds seed, seed+1, ...); > 1 "
                                     "also reports every one-model-per-fold ensemble (the "
                                     "reference: 3).")
    seed: int = _field(0, "Seed of everything random (weights, batches, augmentation, pools).")
    deterministic: bool = _field(False, "TensorFlow op determinism (bit-identical reruns, "
                                        "slower on GPU).")
    eval_batch_size: int = _field(D.EVAL_BATCH_SIZE, "Batch size of embedding passes.")
    recall_at: Tuple[int, ...] = _field(D.RECALL_AT, "Ranks of Recall@K.")
    compute_nmi: bool = _field(True, "Compute NMI (k-means) on the test set.")
    eval_pca_dim: int = _field(0, "PCA of the test embeddings to this dimension, fitted on the "
                                  "reference set (0 = none).")
    eval_at_k: Tuple[int, ...] = _field((), "K list of the reference's AllAtK outputs "
                                            "(MAP@K, P@K, R@K); empty = none.")
    monitor: str = _field(registry.MONITORS[0], "Metric of early stopping, the plateau "
                                                "schedule and the CCP schedule.",
                          registry.MONITORS)
    select_on_test: bool = _field(False, "Monitor the TEST split instead of a validation fold "
                                         "(the reference's conventional configs; needs "
                                         "--folds=1).")
    validation_classes: float = _field(0.0, "With --folds=1: the fraction of the training "
                                            "classes (the last ones) held out as the validation "
                                            "split of early stopping and the CCP schedule "
                                            "(0 = none).")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Output folder and execution: nothing here changes what is trained."""

    output_dir: str = _field("runs/experiment", "Folder for checkpoints, logs, results, exports.")
    export: bool = _field(True, "Export per-fold and ensemble SavedModel embedders.")
    report: bool = _field(True, "Write plots and report.md.")
    tsne_points: int = _field(1500, "Test embeddings shown in the t-SNE plot (0 = no t-SNE).")
    radius_images: int = _field(2048, "CCP runs: training images (a fixed seeded subsample, "
                                      "eval transform) whose covering radius by their class's "
                                      "proxies is measured after every epoch (0 = off; an "
                                      "inference pass over them each epoch).")
    precision: str = _field("float32", "Compute precision policy.", registry.PRECISIONS)
    strategy: str = _field("default", "tf.distribute strategy.", registry.STRATEGIES)
    tpu: str = _field("", "TPU name or grpc:// address for --strategy=tpu.")
    steps_per_execution: int = _field(1, "Train steps per device call (the host reads the "
                                         "losses once per call; same results as 1).")
    jit_compile: bool = _field(False, "Compile the train step with XLA (a TPU compiles "
                                      "everything with XLA anyway).")
    progress_bar: bool = _field(True, "Show a progress bar per epoch.")


GROUPS = {
    "data": DataConfig, "model": ModelConfig, "loss": LossConfig, "ccp": CCPConfig,
    "xbm": XBMConfig, "optimizer": OptimizerConfig, "protocol": ProtocolConfig, "run": RunConfig,
}


# Old flag spellings -> the flag now named like the library argument (one name per concept).
# The old ones still work everywhere: command line and flagfiles (absl aliases), from_flags /
# replace, and the config.json of runs stored before the rename (run_folder reads them).
RENAMED_FLAGS = {
    "ccp_lambda": "ccp_lambda_0",
    "ccp_min_iterations": "ccp_min_epochs_per_instance",
    "ccp_monitor_metric": "ccp_monitor",
}


def current_flag_names(values):
    """``{flag: value}`` with old spellings (:data:`RENAMED_FLAGS`) under their new names."""
    return {RENAMED_FLAGS.get(name, name): value for name, value in values.items()}


def flag_name(field):
    """The command-line flag of a group field."""
    return field.metadata.get("flag", field.name)


def flag_fields():
    """``[(flag name, group name, dataclasses.Field)]`` of every flag, in schema order."""
    return [(flag_name(f), group, f)
            for group, cls in GROUPS.items() for f in dataclasses.fields(cls)]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    ccp: CCPConfig = dataclasses.field(default_factory=CCPConfig)
    xbm: XBMConfig = dataclasses.field(default_factory=XBMConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    protocol: ProtocolConfig = dataclasses.field(default_factory=ProtocolConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    @classmethod
    def from_flags(cls, values):
        """Builds a config from ``{flag name: value}`` (missing flags keep their defaults;
        old spellings of renamed flags are accepted)."""
        values = current_flag_names(values)
        unknown = set(values) - {name for name, _, _ in flag_fields()}
        if unknown:
            raise ConfigError(f"unknown experiment flags: {', '.join(sorted(unknown))}")
        groups = {}
        for group, group_cls in GROUPS.items():
            groups[group] = group_cls(**{
                f.name: values[flag_name(f)] for f in dataclasses.fields(group_cls)
                if flag_name(f) in values})
        return cls(**groups)

    def flags(self):
        """``{flag name: value}`` of every flag."""
        return {name: getattr(getattr(self, group), field.name)
                for name, group, field in flag_fields()}

    def replace(self, **flag_changes):
        """A copy with some flags changed, by flag name (``replace(ccp=True, folds=2)``)."""
        return ExperimentConfig.from_flags({**self.flags(), **flag_changes})

    def to_dict(self):
        """``{group: {flag name: value}}`` (the layout of config.json)."""
        flat = self.flags()
        return {group: {flag_name(f): flat[flag_name(f)] for f in dataclasses.fields(cls)}
                for group, cls in GROUPS.items()}

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def resolved_image_size(self):
        if self.data.image_size:
            return self.data.image_size
        return registry.BACKBONES[self.model.backbone].image_size

    @property
    def batch_size(self):
        return self.data.classes_per_batch * self.data.samples_per_class

    @property
    def method(self):
        """The method's title in tables ("C2-CCP")."""
        return registry.method_title(self.loss.name, self.ccp.enabled, self.xbm.enabled,
                                     self.loss.proxy_synthesis, self.loss.mdr)


POSITIVE_INTS = (
    "embedding_size", "classes_per_batch", "samples_per_class", "steps_per_epoch", "max_epochs",
    "patience", "folds", "repeats", "eval_batch_size", "ccp_proxies_per_class", "ccp_pool_size",
    "ccp_patience", "ccp_min_epochs_per_instance", "xbm_memory_batches", "soft_triple_centers",
    "fastap_num_bins", "steps_per_execution", "proxy_nca_proxies_per_class",
)


def _choice_problems(flat):
    problems = []
    for name, _, field in flag_fields():
        choices = field.metadata.get("choices")
        if choices is not None and flat[name] not in choices:
            problems.append(f"--{name}={flat[name]!r} is not one of {', '.join(choices)}")
    return problems


def _range_problems(flat):
    problems = [f"--{name} must be >= 1, got {flat[name]}"
                for name in POSITIVE_INTS if flat[name] < 1]
    if flat["image_size"] < 0:
        problems.append(f"--image_size must be >= 0, got {flat['image_size']}")
    if not 0.0 < flat["min_crop_area"] <= 1.0:
        problems.append(f"--min_crop_area must be in (0, 1], got {flat['min_crop_area']}")
    if flat["learning_rate"] <= 0:
        problems.append(f"--learning_rate must be > 0, got {flat['learning_rate']}")
    if flat["ccp_monitor_lag"] not in (0, 1):
        problems.append(f"--ccp_monitor_lag must be 0 or 1, got {flat['ccp_monitor_lag']}")
    if not flat["recall_at"] or any(k < 1 for k in flat["recall_at"]):
        problems.append(f"--recall_at must be positive integers, got {flat['recall_at']}")
    for name in ("tsne_points", "radius_images"):
        if flat[name] < 0:
            problems.append(f"--{name} must be >= 0, got {flat[name]}")
    if flat["warmup_epochs"] < 0:
        problems.append(f"--warmup_epochs must be >= 0, got {flat['warmup_epochs']}")
    problems += _toolbox_problems(flat)
    return problems


def _toolbox_problems(flat):
    """Issue 15 options: values and the options they need."""
    problems = []
    if flat["nesterov"] and flat["optimizer"] != "sgd":
        problems.append("--nesterov needs --optimizer=sgd")
    if flat["momentum"] and flat["optimizer"] not in ("sgd", "rmsprop"):
        problems.append("--momentum needs --optimizer=sgd or rmsprop")
    for name in ("momentum", "eval_pca_dim", "ccp_fixed_interval", "ccp_perturb_noise",
                 "ccp_projection_every_steps"):
        if flat[name] < 0:
            problems.append(f"--{name} must be >= 0, got {flat[name]}")
    if flat["ccp_fixed_interval"] and flat["ccp_projection_every_steps"]:
        problems.append("--ccp_fixed_interval (epochs) and --ccp_projection_every_steps (steps) "
                        "both fix when CCP projects: set only one")
    if flat["warmup_lr_multiplier"] <= 0:
        problems.append(f"--warmup_lr_multiplier must be > 0, got {flat['warmup_lr_multiplier']}")
    if any(k < 1 for k in flat["eval_at_k"]):
        problems.append(f"--eval_at_k must be positive integers, got {flat['eval_at_k']}")
    if flat["cub_variant"] != "standard" and flat["dataset"] != "cub":
        problems.append("--cub_variant needs --dataset=cub")
    if flat["crop_to_bbox"] and flat["dataset"] not in ("cub", "cars196"):
        problems.append("--crop_to_bbox needs --dataset=cub or cars196")
    if (flat["cub_variant"] != "standard" or flat["crop_to_bbox"]) \
            and flat["data_source"] != "files":
        problems.append("--cub_variant/--crop_to_bbox need --data_source=files")
    return problems


def _combination_problems(config):
    problems = []
    data, loss = config.data, config.loss.name
    embedded = data.dataset in registry.EMBEDDED_DATASETS
    if not embedded and not data.data_dir:
        problems.append(f"--dataset={data.dataset} needs --data_dir (the data set's folder)")
    remote = "://" in data.data_dir  # gs://... (checked by TensorFlow when read)
    if data.data_dir and not embedded and not remote and not os.path.isdir(data.data_dir):
        problems.append(f"--data_dir={data.data_dir!r} is not an existing folder")
    if config.ccp.enabled and loss in registry.PROXY_LOSSES:
        problems.append(f"--ccp wraps a pair loss ({', '.join(registry.PAIR_LOSSES)}); "
                        f"--loss={loss} already owns proxies")
    if config.xbm.enabled and loss in registry.PROXY_LOSSES:
        problems.append(f"--xbm needs a pair loss, not --loss={loss}")
    if loss in registry.PAIR_LOSSES and data.samples_per_class < 2:
        problems.append(f"--loss={loss} needs positive pairs in a batch: --samples_per_class "
                        "must be >= 2")
    problems += _loss_option_problems(config.loss)
    if config.protocol.select_on_test and config.protocol.folds != 1:
        problems.append("--select_on_test monitors the test split of one model on all training "
                        f"classes: it needs --folds=1, got --folds={config.protocol.folds}")
    problems += _validation_source_problems(config)
    problems += _tpu_problems(config)
    return problems


def _validation_source_problems(config):
    """--folds=1 has no validation fold: it needs a validation source or a stated budget (a run
    without one would train --max_epochs epochs with no early stopping and no CCP schedule)."""
    protocol, problems = config.protocol, []
    fraction = protocol.validation_classes
    if not 0.0 <= fraction < 1.0:
        return [f"--validation_classes must be in [0, 1), got {fraction}"]
    if fraction and protocol.folds != 1:
        return [f"--validation_classes holds out classes of the one model of --folds=1; with "
                f"--folds={protocol.folds} each fold validates on its own class fold"]
    if fraction and protocol.select_on_test:
        return ["--validation_classes and --select_on_test are two validation sources: give one"]
    if protocol.folds != 1 or fraction or protocol.select_on_test:
        return problems
    if config.ccp.enabled and not config.ccp.projection_every_steps:
        problems.append(
            "--ccp with --folds=1 has no validation split to drive its projection schedule: "
            "give --validation_classes=0.25 (hold out a quarter of the training classes), "
            "--select_on_test (the reference's conventional protocol) or "
            "--ccp_projection_every_steps=N")
    elif protocol.max_epochs == D.MAX_EPOCHS:
        problems.append(
            f"--folds=1 without a validation split would train --max_epochs={D.MAX_EPOCHS} "
            "epochs with no early stopping: give --validation_classes=0.25, --select_on_test "
            "or a smaller --max_epochs budget")
    return problems


def _tpu_problems(config):
    """A TPU runs the whole input pipeline in-graph and reads a TFDS copy (files on the host
    cannot reach a TPU VM's workers; Python generators cannot run on a TPU)."""
    if config.run.strategy != "tpu":
        return []
    data, problems = config.data, []
    if not config.run.tpu:
        problems.append("--strategy=tpu needs --tpu (the TPU name or address)")
    if data.input_pipeline != "ingraph":
        problems.append("--strategy=tpu needs --input_pipeline=ingraph (a TPU cannot run the "
                        "Python generator)")
    if data.data_source != "tfds":
        problems.append("--strategy=tpu needs --data_source=tfds (a prepared TFDS copy, e.g. "
                        "--data_dir=gs://BUCKET/tfds)")
    return problems


def _loss_option_problems(loss):
    spec, problems = registry.LOSSES[loss.name], []
    if loss.miner != registry.NO_MINER and spec.kind != registry.PAIR:
        problems.append(f"--miner={loss.miner} needs a pair loss, not --loss={loss.name}")
    if not loss.average_nonzero_only and not spec.averages_all:
        valid = ", ".join(n for n, s in registry.LOSSES.items() if s.averages_all)
        problems.append(f"--noaverage_nonzero_only works with --loss={valid}, not {loss.name}")
    if loss.distance != D.DISTANCE and not spec.takes_distance:
        valid = ", ".join(n for n, s in registry.LOSSES.items() if s.takes_distance)
        problems.append(f"--distance={loss.distance} works with --loss={valid}, not {loss.name}")
    if loss.proxy_nca_proxies_per_class != D.PROXY_NCA_PROXIES_PER_CLASS \
            and loss.name != "proxy_nca":
        problems.append(f"--proxy_nca_proxies_per_class needs --loss=proxy_nca, not {loss.name}")
    if loss.proxy_synthesis and not spec.synthesizable:
        valid = ", ".join(n for n, s in registry.LOSSES.items() if s.synthesizable)
        problems.append(f"--proxy_synthesis wraps --loss={valid}, not {loss.name}")
    return problems


def _weights_problems(model):
    weights = model.weights
    if weights in ("none", ""):
        return []
    names = registry.BACKBONES[model.backbone].named_weights
    if weights in names or os.path.isfile(weights):
        return []
    choices = ", ".join(repr(n) for n in ("none",) + names)
    if weights in ("imagenet", "symbols_pretrained"):
        return [f"--weights={weights} is not available for --backbone={model.backbone}: give "
                f"{choices} or a weight file"]
    return [f"--weights={weights!r} is not a file (give a weight file of --backbone="
            f"{model.backbone} or of its embedding model, or {choices})"]


def validate(config):
    """Checks everything that needs no data; raises ConfigError naming the offending flags."""
    flat = config.flags()
    problems = _choice_problems(flat)
    if not problems:  # the other checks assume valid choices
        problems = (_range_problems(flat) + _combination_problems(config)
                    + _weights_problems(config.model))
    if problems:
        raise ConfigError("invalid experiment flags: " + "; ".join(problems))
    return config
