"""Kubernetes: the ``PaddleJob`` operator and ``fleetkit submit``.

Layers (none imports fleetkit.core, pserver or collective):

- ``names``: group/version/labels/defaults, the one place for resource names;
- ``spec``: defaults and validation of a job's spec (errors name the field);
- ``kubeflow``: Kubeflow ``kubeflow.org/v1`` PaddleJob -> our shape (one pure function);
- ``builders``: pods, headless services and the auth Secret of a job (pure);
- ``status``: next status and the actions to take, from the observed pods (pure);
- ``handlers``: thin kopf handlers that observe, call ``status.plan`` and apply it;
- ``submit``: ``fleetkit submit`` (write, create and follow a job).

Everything but ``handlers`` and ``submit`` works on plain dicts.
"""
from __future__ import annotations

from .builders import build_pod, build_secret, build_service, desired_pods
from .kubeflow import from_kubeflow
from .spec import SpecError, normalize
from .status import Plan, plan

__all__ = ["Plan", "SpecError", "build_pod", "build_secret", "build_service", "desired_pods",
           "from_kubeflow", "normalize", "plan"]
