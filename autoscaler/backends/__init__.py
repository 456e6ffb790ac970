"""What the controller scales: one small interface, a backend per platform.

A backend reports the replicas it runs and applies new counts. ``KubernetesBackend`` patches
the scale subresource of Deployments; ``LocalBackend`` starts and stops the processes of
``kiosk up``. The controller (``autoscaler.controller``) and the policy know nothing else.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Replicas:
    """What runs now: model servers asked for and ready, consumers per queue."""

    model_servers: int
    model_servers_ready: int
    consumers: Mapping[str, int] = field(default_factory=dict)


class BackendError(RuntimeError):
    """The platform refused or could not be reached; the controller tries again next tick."""


class Backend(Protocol):
    def replicas(self) -> Replicas:
        """Current replicas, as the platform reports them."""
        ...

    def scale_model_servers(self, replicas: int) -> None:
        """Ask for ``replicas`` model servers."""
        ...

    def scale_consumers(self, queue: str, replicas: int, busy: Collection[str] = ()) -> None:
        """Ask for ``replicas`` consumers of ``queue``. ``busy`` names the hosts (pod names
        on a cluster) whose consumer holds a job, so a scale-down removes idle ones first."""
        ...

    def mark_deletion_costs(self, queue: str, busy: Collection[str]) -> int:
        """Mark which of ``queue``'s consumers are busy so that any scale-down (an HPA's too)
        removes idle ones first; returns how many were re-marked."""
        ...
