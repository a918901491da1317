"""The framework module sim hands the real training toolkit (``SAGEMAKER_TRAINING_MODULE``).

The AWS PyTorch training image sets ``SAGEMAKER_TRAINING_MODULE=
sagemaker_pytorch_container.training:main``; ``sagemaker_training.trainer`` imports it and
calls ``main()``. sim points the variable here instead. ``main`` does what the PyTorch
toolkit does on a single CPU host -- ``entry_point.run(..., capture_error=True)``, so the
script's error text reaches ``output/failure`` -- minus the DNS wait and NCCL settings, and
it swaps the toolkit's ``pip install`` of ``requirements.txt`` (and of a ``setup.py``
package) for a check of the host environment (``local_runs.sim.requirements``).

If the process that launched the job dies (``LOCAL_RUNS_OWNER_PID``), the job's whole
process group is terminated.
"""
from __future__ import annotations

import logging
import os

from sagemaker_training import entry_point, environment, errors, modules, runner

from local_runs.sim import procs
from local_runs.sim.requirements import RequirementsNotSatisfied, ensure_satisfied

logger = logging.getLogger(__name__)


class MissingRequirementsError(errors.ClientError):
    """requirements.txt names packages the host environment lacks (sim never pip-installs)."""


def _check_requirements(path, capture_error=False):  # same signature as the toolkit's
    requirements = os.path.join(path, "requirements.txt")
    if not os.path.exists(requirements):
        return
    logger.info("sim: checking %s against the host environment (no pip install)", requirements)
    try:
        ensure_satisfied(requirements)
    except RequirementsNotSatisfied as exc:
        raise MissingRequirementsError(str(exc)) from None


def _package_without_install(path, capture_error=False):
    _check_requirements(path, capture_error)
    logger.info("sim: not pip-installing the package in %s; it runs from that directory", path)


def patch_toolkit_installs() -> None:
    """Replace the toolkit's pip installs with the host-environment check."""
    modules.install_requirements = _check_requirements
    modules.install = _package_without_install


def main() -> None:
    patch_toolkit_installs()
    procs.watch_owner(procs.terminate_own_group)
    env = environment.Environment()
    logger.info("sim: invoking the user training script")
    entry_point.run(
        uri=env.module_dir,
        user_entry_point=env.user_entry_point,
        args=env.to_cmd_args(),
        env_vars=env.to_env_vars(),
        capture_error=True,
        runner_type=runner.ProcessRunnerType,
    )
