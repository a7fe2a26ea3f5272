"""Named exceptions, in one place.

Each carries a ``permanent`` flag: a permanent error is not worth retrying
(bad credentials, a plan that does not include the data, an invalid config),
a transient one is (timeouts, 5xx, 429).
"""
from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""

    permanent = False
    code = "appliance_error"

    def __init__(self, message: str, *, permanent: bool | None = None):
        super().__init__(message)
        self.message = message
        if permanent is not None:
            self.permanent = permanent


class ConfigError(ApplianceError):
    """The config file is invalid. ``errors`` lists every problem as
    ``PATH:LINE: at <json.path>: <message>``."""

    permanent = True
    code = "config_invalid"

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors) if self.errors else "invalid config")


class ServiceError(ApplianceError):
    """An embedded or external service (PostgreSQL, Redis) could not be used."""

    code = "service_error"


class ProviderError(ApplianceError):
    """A vendor request failed. ``status`` is the HTTP status when there was one."""

    code = "provider_error"

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 permanent: bool | None = None):
        super().__init__(message, permanent=permanent)
        self.status = status
        self.url = url


class UnknownSymbol(ProviderError):
    """The vendor does not know the ticker (its reference says so): asking
    again will not help until the symbol is corrected or removed."""

    code = "symbol_unknown"
    permanent = True


class ProviderAuthError(ProviderError):
    """401/403 from a vendor: retrying will not help; the operator must act."""

    permanent = True
    code = "provider_auth"


class ProviderDataError(ProviderError):
    """The vendor answered with something that is not the data we asked for
    (malformed JSON, a missing field)."""

    code = "provider_data"


class JobError(ApplianceError):
    code = "job_error"


class LockBusy(JobError):
    """Another run of the same job holds its lock."""

    code = "lock_busy"


class HandedOver(JobError):
    """A fanned-out backfill's parent stopped by its worker's stop (Ctrl-C of
    ``appliance up``, a restart): the chunks it leaves are queued for any
    worker, and the last one ends the run. Not a failure: the run stays
    running and RQ does not retry the parent."""

    code = "handed_over"


class WorkerStopping(BaseException):
    """Raised in a work horse whose worker was asked to stop (Ctrl-C of
    ``appliance up``, a restart) when its job did not end within the grace
    (``jobs.worker.HORSE_STOP_GRACE_S``). A BaseException, like Ctrl-C's
    KeyboardInterrupt: no ``except Exception`` on the way takes it for a
    failure of its own; ``runs.execute`` records the run as interrupted and
    RQ's retry policy (``jobs.retries``) runs it again once a worker is back."""

    code = "worker_stopping"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BackupError(ApplianceError):
    code = "backup_error"


class ExportError(ApplianceError):
    """The Parquet dataset could not be written (a full disk, a directory
    that is not writable): retrying at once will not help; the next run
    writes what is missing."""

    permanent = True
    code = "export_error"
