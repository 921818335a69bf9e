"""CCP's alternating projection (SPEC §5), one job per module.

- :mod:`~ccp.projection.kcenter`: pure tensor functions: :func:`greedy_k_center` (public API),
  covering radii, proxy distances, the pool-size rule.
- :mod:`~ccp.projection.schedule`: :class:`ProjectionSchedule`, the pure-Python decision rule
  (continue / new best / project) fed one validation value per epoch.
- :mod:`~ccp.projection.anchor`: :class:`ProximalAnchor` (``w_prev``, ``lambda_t``, the best
  snapshot) and its gradient transform :class:`ProximalTerm` (SPEC §5.1).
- :mod:`~ccp.projection.proxies`: :func:`rebuild_proxy_bank`, greedy k-center from a pool and a
  cover assigned to the proxy owner (SPEC §5.3).
- :mod:`~ccp.projection.alternating`: :class:`AlternatingProjection`, the three composed and
  acting on the schedule's decisions.
"""
from ccp.projection.alternating import AlternatingProjection, ScheduleDecision
from ccp.projection.anchor import ProximalAnchor, ProximalTerm
from ccp.projection.kcenter import (
    batched_squared_distances,
    check_finite_pool,
    covering_radius,
    greedy_k_center,
    greedy_k_center_indices,
    mean_proxy_distance,
    pool_rounds,
)
from ccp.projection.proxies import rebuild_proxy_bank, validated_pool
from ccp.projection.schedule import (
    CONTINUE,
    NEW_BEST,
    PROJECT,
    InstanceSummary,
    ProjectionSchedule,
    proximal_coefficient,
)

__all__ = [
    "AlternatingProjection", "CONTINUE", "InstanceSummary", "NEW_BEST", "PROJECT",
    "ProjectionSchedule", "ProximalAnchor", "ProximalTerm", "ScheduleDecision",
    "batched_squared_distances", "check_finite_pool", "covering_radius", "greedy_k_center",
    "greedy_k_center_indices", "mean_proxy_distance", "pool_rounds", "proximal_coefficient",
    "rebuild_proxy_bank", "validated_pool",
]
