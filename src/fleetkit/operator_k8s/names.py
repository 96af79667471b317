"""Resource names, labels and defaults shared by the operator, ``submit`` and the CRDs."""
from __future__ import annotations

GROUP, VERSION, PLURAL, KIND = "fleetkit.io", "v1", "paddlejobs", "PaddleJob"
API_VERSION = f"{GROUP}/{VERSION}"
KUBEFLOW_GROUP, KUBEFLOW_VERSION = "kubeflow.org", "v1"
KUBEFLOW_API_VERSION = f"{KUBEFLOW_GROUP}/{KUBEFLOW_VERSION}"

#: labels on every pod and service of a job (the service selector uses all three)
LABEL_JOB = "fleetkit.io/job-name"
LABEL_ROLE = "fleetkit.io/replica-type"
LABEL_INDEX = "fleetkit.io/replica-index"

ROLE_PS, ROLE_WORKER = "ps", "worker"
ROLES = (ROLE_PS, ROLE_WORKER)

#: the container the operator reads exit codes from (Kubeflow's name); else the first one
MAIN_CONTAINER = "paddle"
PORT_NAME = "fleetkit"
DEFAULT_PORT = 36543           # Kubeflow's default PaddleJob port

RESTART_NEVER, RESTART_ON_FAILURE, RESTART_EXIT_CODE = "Never", "OnFailure", "ExitCode"
RESTART_POLICIES = (RESTART_NEVER, RESTART_ON_FAILURE, RESTART_EXIT_CODE)
CLEAN_NONE, CLEAN_RUNNING, CLEAN_ALL = "None", "Running", "All"
CLEAN_POLICIES = (CLEAN_NONE, CLEAN_RUNNING, CLEAN_ALL)

DEFAULT_BACKOFF_LIMIT = 3
DEFAULT_CLEAN_POD_POLICY = CLEAN_RUNNING   # pservers still up after the trainers finished go away

#: job name: a DNS-1035 label short enough for "<name>-worker-<index>"
MAX_JOB_NAME = 45

SECRET_KEY = "token"           # key of the per-job auth Secret's token


def pod_name(job: str, role: str, index: int) -> str:
    """Pod (and headless service) name: ``{job}-{ps|worker}-{index}``."""
    return f"{job}-{role}-{index}"


def secret_name(job: str) -> str:
    """Name of the job's auth Secret."""
    return f"{job}-auth"
