"""Every environment variable fleetkit reads: its name, and one function that reads it.

The launcher and the Kubernetes operator talk to training processes only through
these variables (Paddle's names).  ``load_role`` parses that contract into a frozen
``RoleInfo`` and reports every missing or bad variable in one error, quoting names
and values.  Every other setting is a function taking an optional mapping (default:
``os.environ``, read at call time, because tests and launchers change it between
calls).  No other module reads the environment (``tests/unit/test_env_reads.py``);
modules that build a child's environment take the names from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .errors import ConfigError

TRAINING_ROLE = "TRAINING_ROLE"
PADDLE_TRAINING_ROLE = "PADDLE_TRAINING_ROLE"
PADDLE_TRAINER_ID = "PADDLE_TRAINER_ID"
PADDLE_TRAINERS_NUM = "PADDLE_TRAINERS_NUM"
PADDLE_TRAINER_ENDPOINTS = "PADDLE_TRAINER_ENDPOINTS"
PADDLE_CURRENT_ENDPOINT = "PADDLE_CURRENT_ENDPOINT"
PADDLE_PSERVERS_IP_PORT_LIST = "PADDLE_PSERVERS_IP_PORT_LIST"
POD_IP = "POD_IP"
PADDLE_PORT = "PADDLE_PORT"
FLEETKIT_AUTH_TOKEN = "FLEETKIT_AUTH_TOKEN"
#: fluid's flag: executors name the op that produced NaN/inf; pservers refuse non-finite gradients
FLAGS_CHECK_NAN_INF = "FLAGS_check_nan_inf"
#: 1: a pserver restarted without a checkpoint is re-seeded from trainer 0's last pulled copy
FLEETKIT_PS_RESEED_ON_RESTART = "FLEETKIT_PS_RESEED_ON_RESTART"
#: os.pathsep-separated directories a pserver's CheckpointNotify may write into (besides checkpoint_dir)
FLEETKIT_PS_NOTIFY_DIRS = "FLEETKIT_PS_NOTIFY_DIRS"


def _source(env: Mapping[str, str] | None) -> Mapping[str, str]:
    """The mapping to read: ``env`` if given (tests, a child's planned env), else the live
    ``os.environ`` at call time (tests and launchers change it between calls)."""
    return os.environ if env is None else env


def flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether a boolean variable is on ('1', 'true', 'yes', 'on'; unset: off)."""
    raw = _source(env).get(name, "")
    return raw.strip().lower() in ("1", "true", "yes", "on")


#: fluid's math-library threads per process (its default 1): each executor's BLAS calls use this
#: many threads, so a busy core elsewhere does not stall a matmul's other thread
FLAGS_PADDLE_NUM_THREADS = "FLAGS_paddle_num_threads"
#: the variables by which a user sets BLAS / OpenMP threads directly (then fleetkit leaves them)
MATH_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def paddle_num_threads(env: Mapping[str, str] | None = None) -> int | None:
    """``FLAGS_paddle_num_threads`` (a positive int); unset: 1 as in fluid, or None when one of
    ``MATH_THREAD_VARIABLES`` is set (the user chose the math library's threads)."""
    src = _source(env)
    raw = src.get(FLAGS_PADDLE_NUM_THREADS, "").strip()
    if not raw:
        return None if any(src.get(v, "").strip() for v in MATH_THREAD_VARIABLES) else 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{FLAGS_PADDLE_NUM_THREADS}={raw!r} is not a positive number of threads")
    return n


#: set to 0 / false / off / no to keep every pserver tensor on gRPC (client and server; default on)
FLEETKIT_PS_BULK = "FLEETKIT_PS_BULK"


def ps_bulk_enabled(env: Mapping[str, str] | None = None) -> bool:
    """``FLEETKIT_PS_BULK``: whether the pserver bulk channel may be used (unset: yes)."""
    return _source(env).get(FLEETKIT_PS_BULK, "1").strip().lower() not in ("0", "false", "off", "no")


def auth_token(env: Mapping[str, str] | None = None) -> str:
    """``FLEETKIT_AUTH_TOKEN``: the shared secret of pservers and trainers ('' = no auth)."""
    return _source(env).get(FLEETKIT_AUTH_TOKEN, "")


#: fluid's garbage-collection flag: >= 0 makes executors free each intermediate as soon as no
#: later op reads it (fleetkit frees at once, whatever the threshold); < 0 or unset keeps them
FLAGS_EAGER_DELETE_TENSOR_GB = "FLAGS_eager_delete_tensor_gb"


def eager_delete_tensor_gb(env: Mapping[str, str] | None = None) -> float:
    """``FLAGS_eager_delete_tensor_gb`` as a number (-1.0 when unset)."""
    raw = _source(env).get(FLAGS_EAGER_DELETE_TENSOR_GB, "").strip()
    if not raw:
        return -1.0
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{FLAGS_EAGER_DELETE_TENSOR_GB}={raw!r} is not a number (use -1 to keep "
                          f"intermediates, 0 to free them as soon as they are unused)") from None


#: default timeout of every collective, in seconds (collective/constants.py: 300 s when unset)
FLEETKIT_COLLECTIVE_TIMEOUT = "FLEETKIT_COLLECTIVE_TIMEOUT"


def collective_timeout_s(env: Mapping[str, str] | None = None) -> float | None:
    """``FLEETKIT_COLLECTIVE_TIMEOUT`` as positive seconds, or None when unset or empty."""
    raw = _source(env).get(FLEETKIT_COLLECTIVE_TIMEOUT)
    if raw is None or raw == "":
        return None
    return _positive_seconds(FLEETKIT_COLLECTIVE_TIMEOUT, raw)


def _positive_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name}={raw!r} is not a positive number of seconds")
    return value


FLEETKIT_SHUFFLE_TIMEOUT = "FLEETKIT_SHUFFLE_TIMEOUT"


def shuffle_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """``FLEETKIT_SHUFFLE_TIMEOUT``: seconds a trainer waits for its peers in a dataset's
    global_shuffle and size queries (300 when unset or empty)."""
    raw = _source(env).get(FLEETKIT_SHUFFLE_TIMEOUT, "").strip()
    if not raw:
        return 300.0
    return _positive_seconds(FLEETKIT_SHUFFLE_TIMEOUT, raw)


def ps_notify_dirs(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``FLEETKIT_PS_NOTIFY_DIRS`` split on ``os.pathsep`` (empty entries dropped)."""
    return tuple(d for d in _source(env).get(FLEETKIT_PS_NOTIFY_DIRS, "").split(os.pathsep) if d)


def trainers_num(env: Mapping[str, str] | None = None) -> int:
    """``PADDLE_TRAINERS_NUM`` alone (1 when unset), for code that runs without a role maker
    (``DGCMomentumOptimizer.minimize`` outside fleet)."""
    raw = _source(env).get(PADDLE_TRAINERS_NUM, "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{PADDLE_TRAINERS_NUM}={raw!r} is not a number of trainers >= 1")
    return int(raw)


def paddle_port(env: Mapping[str, str] | None = None) -> str:
    """``PADDLE_PORT`` as written, stripped ('' when unset): MPISymetricRoleMaker's base port,
    checked there against each rank."""
    return _source(env).get(PADDLE_PORT, "").strip()


def this_host(env: Mapping[str, str] | None = None) -> str:
    """The address peers reach this process at: ``POD_IP``, else the host of
    ``PADDLE_CURRENT_ENDPOINT``, else 127.0.0.1 (a collective store rendezvous listens there)."""
    src = _source(env)
    return src.get(POD_IP) or src.get(PADDLE_CURRENT_ENDPOINT, "").rpartition(":")[0] or "127.0.0.1"


# ---- devices and threads ------------------------------------------------------------------
#: fluid's flag: comma-separated CUDA device ids of this trainer (``fleetkit launch --selected_gpus``)
FLAGS_SELECTED_GPUS = "FLAGS_selected_gpus"
#: fluid's number of CPU places (``cpu_places()`` / ``cuda_pinned_places()``; 1 when unset)
CPU_NUM = "CPU_NUM"
#: BLAS threads; the launcher and ``testing.run_workers`` give children a share of the cores
#: unless the user set it
OMP_NUM_THREADS = "OMP_NUM_THREADS"


def selected_gpu(env: Mapping[str, str] | None = None) -> int | None:
    """The first id of ``FLAGS_selected_gpus``, or None when unset or not a device number."""
    first = _source(env).get(FLAGS_SELECTED_GPUS, "").split(",")[0].strip()
    return int(first) if first.isdigit() else None


def cpu_num(env: Mapping[str, str] | None = None) -> int:
    """``CPU_NUM`` as an integer (1 when unset)."""
    raw = _source(env).get(CPU_NUM, "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{CPU_NUM}={raw!r} is not a number of CPU places") from None


def omp_threads_set(env: Mapping[str, str] | None = None) -> bool:
    """Whether the user set ``OMP_NUM_THREADS`` (then children keep it)."""
    return OMP_NUM_THREADS in _source(env)


# ---- logging, the launcher's options and restarts -----------------------------------------
#: level of fleetkit's own log records on stderr (``_logconfig``; the operator's level, INFO when
#: unset); ``fleetkit launch`` sets INFO for its children unless the user set it
FLEETKIT_LOG_LEVEL = "FLEETKIT_LOG_LEVEL"
#: ``FLEETKIT_LAUNCH_<OPTION>``: the fallback of each ``fleetkit launch --<option>``
FLEETKIT_LAUNCH_PREFIX = "FLEETKIT_LAUNCH_"
#: how many times ``fleetkit launch`` restarted this process (set for the child; 0 when unset)
FLEETKIT_RESTARTS = "FLEETKIT_RESTARTS"
#: ``fleetkit launch --backend``, set for the script to pass to ``init_parallel_env``
FLEETKIT_COLLECTIVE_BACKEND = "FLEETKIT_COLLECTIVE_BACKEND"


def collective_backend(env: Mapping[str, str] | None = None) -> str:
    """``FLEETKIT_COLLECTIVE_BACKEND`` stripped ('' when unset); callers check the name."""
    return _source(env).get(FLEETKIT_COLLECTIVE_BACKEND, "").strip()


def log_level(env: Mapping[str, str] | None = None) -> str:
    """``FLEETKIT_LOG_LEVEL`` stripped and upper-cased ('' when unset); callers check the name."""
    return _source(env).get(FLEETKIT_LOG_LEVEL, "").strip().upper()


def launch_option(option: str, env: Mapping[str, str] | None = None) -> str | None:
    """``FLEETKIT_LAUNCH_<OPTION>`` as written, or None when unset or empty."""
    return _source(env).get(FLEETKIT_LAUNCH_PREFIX + option.upper()) or None


def restarts(env: Mapping[str, str] | None = None) -> int:
    """``FLEETKIT_RESTARTS``: how often the launcher restarted this process (0 when unset)."""
    raw = _source(env).get(FLEETKIT_RESTARTS, "").strip()
    try:
        return int(raw or 0)
    except ValueError:
        raise ConfigError(f"{FLEETKIT_RESTARTS}={raw!r} is not a number of restarts") from None


# ---- the MultiSlot C parser's build (dataset/_fastparse.py) -------------------------------
#: where the compiled parser is cached (default ~/.cache/fleetkit)
FLEETKIT_CACHE_DIR = "FLEETKIT_CACHE_DIR"
#: the C compiler (default ``cc``, then ``gcc``)
CC = "CC"
#: ``numpy`` turns the C parser off
FLEETKIT_PARSER = "FLEETKIT_PARSER"


def cache_dir(env: Mapping[str, str] | None = None) -> str:
    """``FLEETKIT_CACHE_DIR``, else ``~/.cache/fleetkit``."""
    return _source(env).get(FLEETKIT_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "fleetkit")


def c_compiler(env: Mapping[str, str] | None = None) -> str:
    """``CC`` (default ``cc``): the compiler the C parser is built with."""
    return _source(env).get(CC, "cc")


def numpy_parser_only(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``FLEETKIT_PARSER=numpy`` turns the C parser off."""
    return _source(env).get(FLEETKIT_PARSER, "").lower() == "numpy"


# ---- other tools' variables that fleetkit consults -----------------------------------------
#: the kubeconfig the Kubernetes client (and kopf) read; ``--kubeconfig`` sets it for kopf
KUBECONFIG = "KUBECONFIG"
#: S3 region of the demo's fsspec options (default us-east-1); s3fs reads the keys itself
AWS_REGION = "AWS_REGION"


def kubeconfig(env: Mapping[str, str] | None = None) -> str:
    """``KUBECONFIG`` ('' when unset: the client's default ~/.kube/config)."""
    return _source(env).get(KUBECONFIG, "")


def aws_region(env: Mapping[str, str] | None = None) -> str:
    """``AWS_REGION``, else us-east-1."""
    return _source(env).get(AWS_REGION, "us-east-1")


# ---- written for training scripts only (PaddleCloud 1.4 names, cluster_train.sh style) ------
PADDLE_TRAINERS = "PADDLE_TRAINERS"            #: the trainer count
PADDLE_IS_LOCAL = "PADDLE_IS_LOCAL"            #: "0": a distributed job
PADDLE_CURRENT_IP = "PADDLE_CURRENT_IP"        #: this host's address
PADDLE_PSERVERS = "PADDLE_PSERVERS"            #: the pservers' hosts, comma-separated


ROLE_TRAINER, ROLE_PSERVER = "TRAINER", "PSERVER"


@dataclass(frozen=True)
class RoleInfo:
    """Who this process is in the job."""

    role: str                                   #: TRAINER or PSERVER
    trainer_id: int                             #: index among trainers (-1 for a pserver)
    trainers_num: int
    pserver_endpoints: tuple[str, ...] = ()
    trainer_endpoints: tuple[str, ...] = ()
    current_endpoint: str = ""
    server_index: int = -1                      #: index among pservers (-1 for a trainer)
    extra: Mapping[str, str] = field(default_factory=dict)


def _endpoints(raw: str) -> tuple[str, ...]:
    return tuple(e.strip() for e in raw.split(",") if e.strip())


def _bad_endpoints(eps: tuple[str, ...]) -> list[str]:
    bad = []
    for e in eps:
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            bad.append(e)
    return bad


def _int(env: Mapping[str, str], name: str, problems: list[str], default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            problems.append(f"{name} is not set")
            return -1
        return default
    try:
        return int(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not an integer")
        return -1


def load_role(env: Mapping[str, str] | None = None, is_collective: bool = False) -> RoleInfo:
    """Parse the PaddleCloud env contract (PS mode, or collective mode)."""
    env = _source(env)
    return _load_collective(env) if is_collective else _load_ps(env)


def _load_ps(env: Mapping[str, str]) -> RoleInfo:
    problems: list[str] = []
    role = (env.get(TRAINING_ROLE) or env.get(PADDLE_TRAINING_ROLE) or "").upper()
    if role not in (ROLE_TRAINER, ROLE_PSERVER):
        problems.append(f"{TRAINING_ROLE}={env.get(TRAINING_ROLE)!r} must be TRAINER or PSERVER")
    pservers = _endpoints(env.get(PADDLE_PSERVERS_IP_PORT_LIST, ""))
    if not pservers:
        problems.append(f"{PADDLE_PSERVERS_IP_PORT_LIST} is not set (expected 'ip:port,ip:port')")
    elif _bad_endpoints(pservers):
        problems.append(f"{PADDLE_PSERVERS_IP_PORT_LIST} has malformed endpoints {_bad_endpoints(pservers)}")
    trainers = _int(env, PADDLE_TRAINERS_NUM, problems)
    if trainers == 0 or trainers < -1:
        problems.append(f"{PADDLE_TRAINERS_NUM}={trainers} must be >= 1")
    trainer_id, server_index, current = -1, -1, ""
    if role == ROLE_TRAINER:
        trainer_id = _int(env, PADDLE_TRAINER_ID, problems)
        if trainers > 0 and not 0 <= trainer_id < trainers:
            problems.append(f"{PADDLE_TRAINER_ID}={trainer_id} is outside [0, {PADDLE_TRAINERS_NUM}={trainers})")
    elif role == ROLE_PSERVER:
        ip, port = env.get(POD_IP, ""), env.get(PADDLE_PORT, "")
        if not ip:
            problems.append(f"{POD_IP} is not set (needed by a PSERVER)")
        if not port:
            problems.append(f"{PADDLE_PORT} is not set (needed by a PSERVER)")
        current = f"{ip}:{port}"
        if ip and port and pservers and current not in pservers:
            problems.append(f"this pserver's {POD_IP}:{PADDLE_PORT}={current} is not in "
                            f"{PADDLE_PSERVERS_IP_PORT_LIST}={','.join(pservers)}")
        elif ip and port and pservers:
            server_index = pservers.index(current)
    # Optional in PS mode: the trainers' own endpoints, for trainer-to-trainer traffic
    # (InMemoryDataset.global_shuffle(fleet)); Paddle's pslib had its own channel for that.
    trainer_eps = _endpoints(env.get(PADDLE_TRAINER_ENDPOINTS, ""))
    if trainer_eps and _bad_endpoints(trainer_eps):
        problems.append(f"{PADDLE_TRAINER_ENDPOINTS} has malformed endpoints {_bad_endpoints(trainer_eps)}")
    elif trainer_eps and trainers > 0 and len(trainer_eps) != trainers:
        problems.append(f"{PADDLE_TRAINER_ENDPOINTS} has {len(trainer_eps)} endpoints but "
                        f"{PADDLE_TRAINERS_NUM}={trainers}")
    if problems:
        raise ConfigError("bad parameter-server environment: " + "; ".join(problems))
    return RoleInfo(role, trainer_id, trainers, pservers, trainer_eps, current, server_index)


def _load_collective(env: Mapping[str, str]) -> RoleInfo:
    problems: list[str] = []
    role = (env.get(PADDLE_TRAINING_ROLE) or env.get(TRAINING_ROLE) or ROLE_TRAINER).upper()
    if role != ROLE_TRAINER:
        problems.append(f"{PADDLE_TRAINING_ROLE}={role!r} must be TRAINER in collective mode")
    eps = _endpoints(env.get(PADDLE_TRAINER_ENDPOINTS, ""))
    if not eps:
        problems.append(f"{PADDLE_TRAINER_ENDPOINTS} is not set (expected 'ip:port,ip:port')")
    elif _bad_endpoints(eps):
        problems.append(f"{PADDLE_TRAINER_ENDPOINTS} has malformed endpoints {_bad_endpoints(eps)}")
    tid = _int(env, PADDLE_TRAINER_ID, problems, default=0)
    if eps and not 0 <= tid < len(eps):
        problems.append(f"{PADDLE_TRAINER_ID}={tid} is outside the {len(eps)} trainer endpoints")
    num = env.get(PADDLE_TRAINERS_NUM)
    if num and eps and num != str(len(eps)):
        problems.append(f"{PADDLE_TRAINERS_NUM}={num!r} but {PADDLE_TRAINER_ENDPOINTS} has {len(eps)} entries")
    current = env.get(PADDLE_CURRENT_ENDPOINT) or (eps[tid] if eps and 0 <= tid < len(eps) else "")
    if problems:
        raise ConfigError("bad collective environment: " + "; ".join(problems))
    return RoleInfo(ROLE_TRAINER, tid, len(eps), (), eps, current)
