"""How fair a run was: pure functions over what the simulation recorded.

* **Max-min fair shares** (water-filling): ``n`` consumer slots split between owners with
  work waiting so that nobody gets more than they asked for and the rest share equally. This is
  what a perfectly fair scheduler would give at that moment.
* **Jain's fairness index** over each owner's service received divided by that fair share,
  summed over the run (Jain, Chiu and Hawe, 1984, with the fair allocation as the optimum):
  1.0 when every owner got exactly their share, ``1 / n`` when one owner took everything.
  A :class:`ShareLedger` keeps the sums, booked at each claim against the owners with images
  waiting at that moment: where the queue order acts, and where a fair scheduler could give
  every owner their share at once. (Booked at results instead, the index would also count an
  image's own time in the pipeline as unfairness.)
* **Waits**: a submission's *wait* runs from the moment its upload completes until its last
  image is done: what its user waits for. (The moment a consumer first takes one of its images
  is recorded too, as ``start_s``, for a zip the moment the zip consumer took it; it says
  little: consumers take images and then queue at the model server, first come first served,
  so under load much of the waiting happens there.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from benchmark.report import median, percentile


def max_min_fair(demands: Mapping[str, int], capacity: float) -> dict[str, float]:
    """``capacity`` split between ``demands`` by water-filling: each owner gets
    min(demand, level), with the level at which the shares add up to the capacity."""
    out: dict[str, float] = {}
    left = float(capacity)
    order = sorted(demands.items(), key=lambda item: item[1])
    for i, (owner, demand) in enumerate(order):
        level = left / (len(order) - i)
        share = min(float(demand), level)
        out[owner] = share
        left -= share
    return out


def jain_index(values: Iterable[float]) -> float:
    """(sum x)^2 / (n * sum x^2): 1.0 for equal values, 1/n when one value holds everything."""
    xs = [float(x) for x in values]
    squares = sum(x * x for x in xs)
    if not xs or squares == 0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * squares)


class ShareLedger:
    """Service each owner received, and their max-min fair share of it, summed over a run."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.entitled: dict[str, float] = {}

    def book(self, demands: Mapping[str, int], served: Mapping[str, float]) -> None:
        """``served`` went to owners while ``demands`` (units each could have used) stood."""
        capacity = sum(served.values())
        if capacity <= 0:
            return
        for owner, share in max_min_fair(demands, capacity).items():
            self.entitled[owner] = self.entitled.get(owner, 0.0) + share
        for owner, units in served.items():
            self.received[owner] = self.received.get(owner, 0.0) + units

    def ratios(self) -> dict[str, float]:
        """Per owner: service received over their fair share of it (1.0 is fair)."""
        return {o: self.received.get(o, 0.0) / e for o, e in self.entitled.items() if e > 0}

    def jain(self) -> float:
        return jain_index(self.ratios().values())


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """Median and 95th percentile (nearest rank), in the values' unit."""
    if not values:
        return {"median": float("nan"), "p95": float("nan")}
    return {"median": median(list(values)), "p95": percentile(list(values), 95)}


def community_report(
    submissions: Iterable[Any],
    class_of: Callable[[str], str],
    claims: ShareLedger,
) -> dict[str, Any]:
    """Per user and per class of users: waits and starts (median, p95, seconds) over their
    submissions, each user's claims over their fair share, and Jain's index over those.

    ``submissions`` need ``owner``, ``images``, ``arrival``, ``first_start`` and ``finished``.
    """
    waits: dict[str, list[float]] = {}
    starts: dict[str, list[float]] = {}
    images: dict[str, int] = {}
    for sub in submissions:
        if sub.first_start is None or sub.finished is None:
            raise ValueError(f"a submission of {sub.owner} never finished")
        waits.setdefault(sub.owner, []).append(sub.finished - sub.arrival)
        starts.setdefault(sub.owner, []).append(sub.first_start - sub.arrival)
        images[sub.owner] = images.get(sub.owner, 0) + sub.images
    ratios = claims.ratios()
    users: dict[str, dict[str, Any]] = {
        owner: {
            "class": class_of(owner),
            "submissions": len(waits[owner]),
            "images": images[owner],
            "wait_s": _rounded(quantiles(waits[owner])),
            "start_s": _rounded(quantiles(starts[owner])),
            "share_of_fair": round(ratios.get(owner, 1.0), 4),
        }
        for owner in sorted(waits)
    }
    classes: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(class_of(owner) for owner in users):
        owners = [o for o in users if class_of(o) == name]
        classes[name] = {
            "users": len(owners),
            "submissions": sum(len(waits[o]) for o in owners),
            "wait_s": _rounded(quantiles([w for o in owners for w in waits[o]])),
            "start_s": _rounded(quantiles([t for o in owners for t in starts[o]])),
        }
    return {
        "jain_index": round(claims.jain(), 4),
        "classes": classes,
        "users": users,
    }


def _rounded(q: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in q.items()}
