"""The names an experiment can choose from, each with what it builds (no TensorFlow at import).

One entry per loss, backbone, schedule, data set: the flag choices (``experiments/config.py``),
the builders (``experiments/builders.py``) and the method titles of the results tables all read
these dicts, so adding a loss is one :class:`LossSpec` here (plus its flags in ``LossConfig``).
Builders import ``ccp`` when called, so importing this module stays cheap and flag validation
runs before TensorFlow starts.
"""
import dataclasses
from typing import Callable

PAIR = "pair"     # batch-vs-batch loss: CCP and XBM can wrap it
PROXY = "proxy"   # owns its proxies: trained alone


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A base loss of the command line.

    Attributes:
      name: the ``--loss`` value.
      title: the method's name in tables ("C2"; "-CCP" / " + XBM" are appended).
      kind: PAIR or PROXY.
      build: ``(loss_config, num_classes, embedding_size, seed) -> ccp.losses layer``; ``seed``
        is the fold's (for losses that draw random numbers).
      averages_all: accepts ``average_nonzero_only=False`` (the reference's mean over all terms).
      synthesizable: a proxy loss Proxy Synthesis can wrap.
      takes_distance: built with ``--distance`` (the others have their own pdist).
    """

    name: str
    title: str
    kind: str
    build: Callable
    averages_all: bool = False
    synthesizable: bool = False
    takes_distance: bool = False


def _losses():
    from ccp import losses

    return losses


def _pair_options(cfg):
    """Options every pair loss takes: the miner, the reduction and the normalization."""
    return dict(miner=None if cfg.miner == NO_MINER else cfg.miner,
                average_nonzero_only=cfg.average_nonzero_only, normalization=cfg.normalization)


def _contrastive(cfg, num_classes, embedding_size, seed):
    return _losses().ContrastiveLoss(pos_margin=cfg.pos_margin, neg_margin=cfg.neg_margin,
                                     distance=cfg.distance, **_pair_options(cfg))


def _cosine_contrastive(cfg, num_classes, embedding_size, seed):
    return _losses().CosineContrastiveLoss(margin=cfg.cosine_margin, **_pair_options(cfg))


def _triplet(cfg, num_classes, embedding_size, seed):
    return _losses().TripletLoss(margin=cfg.triplet_margin, distance=cfg.distance,
                                 p_switch=cfg.rho_p_switch, switch_seed=seed,
                                 **_pair_options(cfg))


def _multi_similarity(cfg, num_classes, embedding_size, seed):
    return _losses().MultiSimilarityLoss(
        alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base, mining=cfg.ms_mining,
        **_pair_options(cfg))


def _margin(cfg, num_classes, embedding_size, seed):
    return _losses().MarginLoss(margin=cfg.margin_alpha, beta_init=cfg.margin_beta,
                                distance=cfg.distance, p_switch=cfg.rho_p_switch,
                                switch_seed=seed, **_pair_options(cfg))


def _circle(cfg, num_classes, embedding_size, seed):
    return _losses().CircleLoss(margin=cfg.circle_margin, gamma=cfg.circle_gamma,
                                **_pair_options(cfg))


def _fastap(cfg, num_classes, embedding_size, seed):
    return _losses().FastAPLoss(num_bins=cfg.fastap_num_bins, **_pair_options(cfg))


def _ranked_list(cfg, num_classes, embedding_size, seed):
    return _losses().RankedListLoss(
        boundary=cfg.rll_boundary, margin=cfg.rll_margin,
        neg_temperature=cfg.rll_neg_temperature, pos_temperature=cfg.rll_pos_temperature,
        neg_weight=cfg.rll_neg_weight, distance=cfg.distance, **_pair_options(cfg))


def _normalized_softmax(cfg, num_classes, embedding_size, seed):
    return _losses().NormalizedSoftmaxLoss(
        num_classes, embedding_size, temperature=cfg.normalized_softmax_temperature,
        normalization=cfg.normalization)


def _virtual_softmax(cfg, num_classes, embedding_size, seed):
    return _losses().VirtualSoftmaxLoss(
        num_classes, embedding_size, temperature=cfg.virtual_softmax_temperature,
        margin=cfg.virtual_softmax_margin, normalization=cfg.normalization)


def _proxy_anchor(cfg, num_classes, embedding_size, seed):
    return _losses().ProxyAnchorLoss(
        num_classes, embedding_size, margin=cfg.proxy_anchor_margin, alpha=cfg.proxy_anchor_alpha,
        normalization=cfg.normalization)


def _proxy_nca(cfg, num_classes, embedding_size, seed):
    return _losses().ProxyNCALoss(
        num_classes, embedding_size, temperature=cfg.proxy_nca_temperature,
        proxies_per_class=cfg.proxy_nca_proxies_per_class, normalization=cfg.normalization)


def _soft_triple(cfg, num_classes, embedding_size, seed):
    return _losses().SoftTripleLoss(
        num_classes, embedding_size, centers_per_class=cfg.soft_triple_centers,
        lamda=cfg.soft_triple_lambda, gamma=cfg.soft_triple_gamma, tau=cfg.soft_triple_tau,
        margin=cfg.soft_triple_margin, normalization=cfg.normalization)


LOSSES = {spec.name: spec for spec in (
    LossSpec("contrastive", "C2", PAIR, _contrastive, averages_all=True, takes_distance=True),
    LossSpec("cosine_contrastive", "C1", PAIR, _cosine_contrastive),
    LossSpec("triplet", "Triplet", PAIR, _triplet, averages_all=True, takes_distance=True),
    LossSpec("multi_similarity", "MS", PAIR, _multi_similarity),
    LossSpec("margin", "Margin", PAIR, _margin, averages_all=True, takes_distance=True),
    LossSpec("circle", "Circle", PAIR, _circle),
    LossSpec("fastap", "FastAP", PAIR, _fastap),
    LossSpec("ranked_list", "RLL", PAIR, _ranked_list, takes_distance=True),
    LossSpec("proxy_anchor", "ProxyAnchor", PROXY, _proxy_anchor, synthesizable=True),
    LossSpec("proxy_nca", "ProxyNCA++", PROXY, _proxy_nca, synthesizable=True),
    LossSpec("soft_triple", "SoftTriple", PROXY, _soft_triple),
    LossSpec("normalized_softmax", "NormSoftmax", PROXY, _normalized_softmax,
             synthesizable=True),
    LossSpec("virtual_softmax", "VirtualSoftmax", PROXY, _virtual_softmax, synthesizable=True),
)}
PAIR_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.kind == PAIR)
PROXY_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.kind == PROXY)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A backbone of ``ccp.models.build_embedding_model``.

    Attributes:
      name: the ``--backbone`` value (also the library's backbone name).
      image_size: the input side used when ``--image_size=0``.
      named_weights: the weight names ``--weights`` accepts besides "none" and a file path:
        "imagenet" for the ImageNet backbones, "symbols_pretrained" for small_cnn (pretrained
        on the `symbols` set, disjoint from glyphs; experiments/pretraining.py).
    """

    name: str
    image_size: int
    named_weights: tuple


BACKBONES = {spec.name: spec for spec in (
    BackboneSpec("small_cnn", 32, named_weights=("symbols_pretrained",)),
    BackboneSpec("bn_inception", 227, named_weights=("imagenet",)),
    BackboneSpec("resnet50", 227, named_weights=("imagenet",)),
    *(BackboneSpec(f"efficientnet_b{k}", size, named_weights=("imagenet",))
      for k, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))),
)}

# Learning-rate schedules of ccp.training (a test checks this equals ccp.training.LR_SCHEDULES).
LR_SCHEDULES = ("constant", "plateau", "exponential")
# Data sets of data_pipelines.load (a test checks these equal data_pipelines.LOADERS/EMBEDDED).
DATASETS = ("digits", "glyphs", "cub", "cars196", "sop", "inshop")
EMBEDDED_DATASETS = ("digits", "glyphs")  # rendered in memory: no --data_dir
POOLINGS = ("avg", "max", "avg+max")
# Pair miners (a test checks ccp.losses.miners.REGISTRY); "none" mines nothing.
NO_MINER = "none"
MINERS = (NO_MINER, "hard_negatives", "distance_weighted", "distance_weighted_reference",
          "multi_similarity")
# Distances of the pair losses that take one (a test checks ccp.losses.distances.REGISTRY).
DISTANCES = ("euclidean", "squared_euclidean", "cosine", "snr")
# Normalizations of embeddings and proxies in the losses (a test checks ccp.layers.NORMALIZATIONS).
NORMALIZATIONS = ("lipschitz", "l2")
# data_pipelines.DATA_SOURCES and data_pipelines.pipelines.INPUT_PIPELINES (checked by a test).
DATA_SOURCES = ("files", "tfds")
INPUT_PIPELINES = ("generator", "ingraph")
# data_pipelines.pipelines.POOL_TRANSFORMS (checked by a test): the CCP proxy-pool transform.
POOL_TRANSFORMS = ("train", "eval")
# Metrics that early stopping, the plateau schedule and the CCP schedule can monitor (keys of
# the validation metrics; precision_at_1 is Recall@1).
MONITORS = ("map_at_r", "precision_at_1")
FREEZE_BATCHNORM = {"auto": None, "true": True, "false": False}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def method_title(loss_name, ccp=False, xbm=False, proxy_synthesis=False, mdr=False):
    """The method's name in tables: "C2", "C2-CCP", "MS + XBM", "ProxyNCA++ + PS", ..."""
    title = LOSSES[loss_name].title
    if ccp:
        title += "-CCP"
    for on, suffix in ((xbm, " + XBM"), (proxy_synthesis, " + PS"), (mdr, " + MDR")):
        if on:
            title += suffix
    return title
