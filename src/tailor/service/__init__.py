"""Fine-tuning as a service, without HTTP: files, jobs, events and checkpoints in a store, and a
worker that runs each job in its own `tailor train` process."""

from tailor.service.core import Service
from tailor.service.errors import ServiceError

__all__ = ["Service", "ServiceError"]
