"""The health monitor actor: host checks, the fleet view, model management."""

from actors.health.monitor import HealthMonitor

__all__ = ["HealthMonitor"]
