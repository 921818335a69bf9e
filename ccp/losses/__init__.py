"""Loss layers (SPEC §4, §10): ``layer(labels [B], raw embeddings [B, D]) -> scalar float32``."""
from ccp.losses.base import MetricLoss, PairLoss, mean_of_positive_terms
from ccp.losses.ccp import CCPLoss
from ccp.losses.circle import CircleLoss
from ccp.losses.distances import CosineDistance, Distance, EuclideanDistance, SNRDistance
from ccp.losses.fastap import FastAPLoss
from ccp.losses.pair import (ContrastiveLoss, CosineContrastiveLoss, MarginLoss,
                             MultiSimilarityLoss, TripletLoss)
from ccp.losses.proxy import ProxyAnchorLoss, ProxyLoss, ProxyNCALoss, SoftTripleLoss
from ccp.losses.ranked_list import RankedListLoss
from ccp.losses.xbm import CrossBatchMemory
# The reference's other losses, miners and composition switches (issue 15).
from ccp.losses import miners
from ccp.losses.composition import ProxyPairLoss, SquaredEuclideanDistance
from ccp.losses.mdr import MultiLevelDistanceRegularization
from ccp.losses.proxy_synthesis import ProxySynthesisLoss
from ccp.losses.softmax import NormalizedSoftmaxLoss, VirtualSoftmaxLoss
from ccp.losses.weighted import WeightedLoss

__all__ = [
    "CCPLoss", "ContrastiveLoss", "CosineContrastiveLoss", "CrossBatchMemory", "MarginLoss",
    "MetricLoss", "MultiSimilarityLoss", "PairLoss", "ProxyAnchorLoss", "ProxyLoss",
    "ProxyNCALoss", "SoftTripleLoss", "TripletLoss", "mean_of_positive_terms",
    # Literature losses and distances (issue 17).
    "CircleLoss", "Distance", "EuclideanDistance", "FastAPLoss", "RankedListLoss", "SNRDistance",
    # The reference's other losses, miners and switches (issue 15).
    "MultiLevelDistanceRegularization", "NormalizedSoftmaxLoss", "ProxyPairLoss",
    "ProxySynthesisLoss", "SquaredEuclideanDistance", "VirtualSoftmaxLoss", "WeightedLoss",
    "miners",
    # The last computation-head switches of the reference (issue 23, SPEC §4c).
    "CosineDistance",
]
