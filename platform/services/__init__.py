"""Local services for development and tests: SeaweedFS (S3) and an MLflow server.

Both bind 127.0.0.1 only. :class:`SeaweedFS` and :class:`MlflowServer` are context
managers for one process's lifetime; :func:`stack_up`/:func:`stack_down`/:func:`stack_status`
manage both across processes for ``paralab stack``. Tests get a throw-away S3 server from
:func:`seaweedfs_for_tests`.
"""

from paralab.platform.services.mlflow_server import MlflowServer
from paralab.platform.services.process import ServiceError
from paralab.platform.services.seaweedfs import SeaweedFS, SeaweedPorts, find_weed
from paralab.platform.services.stack import (
    ServiceStatus,
    StackStatus,
    stack_down,
    stack_status,
    stack_up,
)
from paralab.platform.services.testing import S3TestServer, seaweedfs_for_tests

__all__ = [
    "MlflowServer",
    "S3TestServer",
    "SeaweedFS",
    "SeaweedPorts",
    "ServiceError",
    "ServiceStatus",
    "StackStatus",
    "find_weed",
    "seaweedfs_for_tests",
    "stack_down",
    "stack_status",
    "stack_up",
]
