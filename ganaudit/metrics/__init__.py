"""Pure metric functions over ``(N, D)`` float32 feature arrays, argument order ``(real, fake)``.

The stable names users import are re-exported here; the layered helpers stay in their modules
(``coverage``, ``fid``, ``modes``, ``memorization``, ``copy_stats``).
"""
from ganaudit.metrics.coverage import prdc
from ganaudit.metrics.fid import frechet_distance, kernel_distance
from ganaudit.metrics.memorization import authenticity, ct_statistic

__all__ = ["prdc", "frechet_distance", "kernel_distance", "ct_statistic", "authenticity"]
