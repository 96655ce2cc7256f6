"""The recent observations of a quantity, for the quantiles a status report carries.

Prometheus histograms give operators percentiles over any window, but only to whoever
scrapes every process. The status each consumer and scorer reports in Redis (``ledrec
status``, the gateway's ``/v1/status``, the dashboard) carries the same quantities as
quantiles of the last few thousand observations, so one read of Redis shows them all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

__all__ = ["RecentValues"]


class RecentValues:
    """The last ``size`` observations (a bounded deque: O(1) to add, from one thread; a
    reader in another thread may see one more or one fewer, which a status does not mind)."""

    def __init__(self, size: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float, count: int = 1) -> None:
        """Observe ``value`` ``count`` times (a batch of requests that took as long)."""
        if count == 1:
            self._values.append(value)
        else:
            self._values.extend([value] * count)

    def extend(self, values: Iterable[float]) -> None:
        self._values.extend(values)

    def quantiles(self, *qs: float) -> list[float] | None:
        """The ``qs`` quantiles of the recent observations (None: none yet)."""
        values = list(self._values)
        if not values:
            return None
        return [float(v) for v in np.quantile(np.asarray(values), qs)]
