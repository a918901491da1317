"""The `docker` backend: the SageMaker SDK's own local mode (`LocalSession`, `instance_type='local'`).

Nothing of the SDK is replaced: it writes its docker-compose files and runs the AWS PyTorch
containers itself (its Compose version check is swapped, see `accept_compose_v2_and_later`, and
its config validation is memoized as in sim: `local_runs.sdk_config.memoize_config_validation`).
This module only supplies what those containers need beside the SDK, checks it before anything
starts, and says what is missing:

* a Docker engine and Docker Compose v2 or later (the SDK runs every job as `docker compose up`;
  SDK 2.257.x accepts only a `docker compose version` that contains "v2", so Compose v5 would make
  it fail: `accept_compose_v2_and_later` swaps that one check for one that reads the major version,
  as SDK v3.21.0 does);
* S3: the moto service of `docker-compose.yml`. The host reaches it at `settings.docker_s3_url`
  (`http://127.0.0.1:4566`, published on loopback only); containers reach it by its alias on the
  network `sagemaker-local` (the network every SDK compose file puts its containers on), as
  `CONTAINER_S3_URL` = `http://local-runs-s3:4566`;
* the AWS PyTorch images (`image_uris`): pulled by the SDK from Amazon ECR on first use.

How the training container finds the code. The SDK hands every container
`AWS_ENDPOINT_URL_S3=<the session's S3 endpoint>`, here `http://127.0.0.1:4566`, which inside a
container is the container itself. Two ways round that:
1. `local_code: True` mounts `source_dir` instead of uploading it. It is not used: in that mode the
   SDK drops `dependencies` (only `_stage_user_code_in_s3` packs them), so training would not find
   `knn` -- the user script passes `dependencies=['knn']`.
2. (used) code travels as `sourcedir.tar.gz` through S3, like on SageMaker, and the containers get
   `S3_ENDPOINT_URL=http://local-runs-s3:4566` from an env file named in the SDK's
   `local.container_config` (`env_file`, merged into every service the SDK generates). The
   sagemaker-training toolkit downloads the code with `endpoint_url=$S3_ENDPOINT_URL`, which
   wins over `AWS_ENDPOINT_URL_S3`. Training data and model artifacts move on the host (the SDK
   downloads channels and uploads `model.tar.gz` itself), so that download is the containers'
   only S3 call.

Credentials. S3 (moto) and the containers get fixed dummy credentials: moto accepts anything,
and the SDK writes the session's credentials into its compose files and container environments,
where real keys have no business. Real credentials matter for one call only: the ECR login that
pulls an AWS image the first time. That client alone is made from the user's own credential
chain (profile, SSO, environment); with no credentials the images must already be pulled, and
`open_session` says how.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from local_runs import resources  # noqa: E402
from local_runs.backends.base import DUMMY_ROLE, LOCAL_BUCKET, Backend, state_dir  # noqa: E402
from local_runs.config import ConfigError, Settings  # noqa: E402

COMPOSE_FILE = resources.compose_file()
S3_SERVICE = "s3"  # service name in docker-compose.yml
S3_ALIAS = "local-runs-s3"  # its name on the network; no dot, so moto reads path-style bucket URLs
S3_PORT = 4566  # the same port inside the network and on the host's loopback
NETWORK = "sagemaker-local"  # the network name the SDK's generated compose files use
CONTAINER_S3_URL = f"http://{S3_ALIAS}:{S3_PORT}"
ENV_FILE_NAME = "docker-containers.env"
DUMMY_ACCESS_KEY_ID = "localrunsdummykey"
DUMMY_SECRET_ACCESS_KEY = "localrunsdummysecret"  # not a secret: moto accepts anything

START_HINT = "start it with `docker compose up -d` in the repository root (see docker-compose.yml)"


def image_uris(settings: Settings) -> dict[str, str]:
    """The AWS PyTorch training and inference images the SDK will run for these settings."""
    from sagemaker import image_uris as sdk_image_uris

    return {
        scope: sdk_image_uris.retrieve(
            "pytorch", settings.region, version=settings.framework_version, py_version=settings.py_version,
            instance_type=settings.resolved_instance_type, image_scope=scope)
        for scope in ("training", "inference")
    }


# --- what the SDK's local mode needs from this machine ---------------------------------------------
def _docker(*args: str, timeout: float = 20) -> subprocess.CompletedProcess | str:
    """Run the docker CLI; a string says why it could not run."""
    exe = shutil.which("docker")
    if exe is None:
        return "the `docker` command is not on PATH (install Docker Engine or Docker Desktop)"
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`docker {' '.join(args)}` did not answer within {timeout:.0f} s"
    except OSError as exc:
        return f"`docker` could not be run: {exc}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def engine_problem() -> str | None:
    """None when a Docker engine answers `docker info`; otherwise why not, in one line."""
    result = _docker("info", "--format", "{{.ServerVersion}}")
    if isinstance(result, str):
        return result
    if result.returncode != 0 or not result.stdout.strip():
        return f"no Docker engine answers (`docker info`: {_last_line(result.stderr)})"
    return None


_COMPOSE_VERSION = re.compile(r"version\s+v?(\d+)\.", re.IGNORECASE)


def compose_major_version(output: str) -> int | None:
    """The major version in `docker compose version` output ("Docker Compose version v2.29.7" -> 2)."""
    match = _COMPOSE_VERSION.search(output or "")
    return int(match.group(1)) if match else None


def compose_command() -> list[str] | None:
    """How to run Docker Compose v2 or later: `docker compose`, else `docker-compose`; None if neither."""
    result = _docker("compose", "version")
    if not isinstance(result, str) and result.returncode == 0 and (compose_major_version(result.stdout) or 0) >= 2:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_problem() -> str | None:
    """None when Docker Compose v2 or later is available."""
    if compose_command() is not None:
        return None
    return ("Docker Compose v2 or later is not installed (`docker compose version` failed); "
            "see https://docs.docker.com/compose/install/")


def _sdk_compose_cmd_prefix() -> list[str]:
    command = compose_command()
    if command is None:  # the SDK's own words for it
        raise ImportError("Docker Compose is not installed. Local Mode features will not work without docker compose. "
                          "For more information on how to install 'docker compose', please, see "
                          "https://docs.docker.com/compose/install/")
    return command


def accept_compose_v2_and_later() -> None:
    """Make the SDK's local mode accept any Docker Compose from v2 on (it looks for "v2" in the output)."""
    from sagemaker.local.image import _SageMakerContainer

    if "_sdk_get_compose_cmd_prefix" not in _SageMakerContainer.__dict__:  # keep the SDK's own, once
        _SageMakerContainer._sdk_get_compose_cmd_prefix = _SageMakerContainer.__dict__["_get_compose_cmd_prefix"]
    _SageMakerContainer._get_compose_cmd_prefix = staticmethod(_sdk_compose_cmd_prefix)


def image_present(uri: str) -> bool:
    result = _docker("images", "-q", uri)
    return not isinstance(result, str) and result.returncode == 0 and bool(result.stdout.strip())


def user_has_credentials(region: str) -> bool:
    import boto3

    return boto3.Session(region_name=region).get_credentials() is not None


def pull_instructions(region: str, images) -> str:
    registry = next(iter(images)).split("/", 1)[0]
    pulls = " && ".join(f"docker pull {uri}" for uri in images)
    return (f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry}"
            f" && {pulls}")


# --- the session ---------------------------------------------------------------------------------
def boto_session(region: str, s3_url: str):
    """A boto3 session for the SDK's local mode.

    Dummy credentials; every S3 client or resource made without an explicit endpoint goes to
    `s3_url` (the SDK makes some itself, e.g. to upload code or repack a model), and the `ecr`
    client -- used by the SDK only to log in before pulling an AWS image -- comes from the user's
    own credential chain.
    """
    import boto3

    class DockerModeSession(boto3.Session):
        def client(self, service_name, *args, **kwargs):
            if service_name == "ecr":
                return boto3.Session(region_name=self.region_name).client(service_name, *args, **kwargs)
            if service_name == "s3" and not args[4:5] and kwargs.get("endpoint_url") is None:
                kwargs["endpoint_url"] = s3_url
            return super().client(service_name, *args, **kwargs)

        def resource(self, service_name, *args, **kwargs):
            if service_name == "s3" and not args[4:5] and kwargs.get("endpoint_url") is None:
                kwargs["endpoint_url"] = s3_url
            return super().resource(service_name, *args, **kwargs)

    return DockerModeSession(aws_access_key_id=DUMMY_ACCESS_KEY_ID, aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
                             region_name=region)


def write_env_file(directory: Path) -> Path:
    """The env file every SDK-generated container gets (via `local.container_config.env_file`)."""
    path = Path(directory) / ENV_FILE_NAME
    text = ("# Written by local_runs (docker backend); read by docker compose for the SDK's containers.\n"
            "# The sagemaker-training toolkit downloads sourcedir.tar.gz from here; it takes precedence\n"
            "# over the SDK's AWS_ENDPOINT_URL_S3, which names the host's 127.0.0.1.\n"
            f"S3_ENDPOINT_URL={CONTAINER_S3_URL}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def local_mode_config(user_config: dict | None, env_file: Path) -> dict:
    """The SDK's local-mode config: the user's (~/.sagemaker/config.yaml) with what this backend needs."""
    config = dict(user_config or {})
    local = dict(config.get("local") or {})
    local["local_code"] = False  # see the module docstring: dependencies must travel in sourcedir.tar.gz
    container_config = dict(local.get("container_config") or {})
    env_files = container_config.get("env_file") or []
    env_files = [env_files] if isinstance(env_files, str) else list(env_files)
    if str(env_file) not in env_files:
        env_files.append(str(env_file))
    container_config["env_file"] = env_files
    local["container_config"] = container_config
    config["local"] = local
    return config


def check_instance_type(settings: Settings) -> None:
    if settings.resolved_instance_type not in ("local", "local_gpu"):
        raise ConfigError(f"instance type {settings.resolved_instance_type!r} (from "
                          f"{settings.sources.get('instance_type', '?')}) is for the sagemaker backend; "
                          "the docker backend runs 'local' (or 'local_gpu')")


def preflight(settings: Settings) -> dict[str, str]:
    """Check the engine, compose and images before anything starts; returns the image URIs."""
    for problem in (engine_problem(), compose_problem()):
        if problem:
            raise ConfigError(f"the docker backend needs Docker: {problem}. "
                              "The sim backend (--backend sim) runs the same job without Docker.")
    images = image_uris(settings)
    missing = [uri for uri in images.values() if not image_present(uri)]
    if missing and not user_has_credentials(settings.region):
        raise ConfigError(
            f"the AWS PyTorch image(s) {', '.join(missing)} are not pulled yet and no AWS credentials were found "
            "to log in to Amazon ECR: configure credentials (aws configure / AWS_PROFILE), or pull them once with: "
            + pull_instructions(settings.region, missing))
    return images


def open_session(settings: Settings, state_dir: Path, bucket: str, check: bool = True):
    """The SDK's `LocalSession` for the docker backend, and what the backend reports about it.

    `check=False` skips the Docker checks (tests that fake the docker CLI check separately).
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from sagemaker.config import load_sagemaker_config
    from sagemaker.local import LocalSession

    from local_runs.sdk_config import memoize_config_validation, with_telemetry_opt_out

    check_instance_type(settings)
    images = preflight(settings) if check else image_uris(settings)
    accept_compose_v2_and_later()
    memoize_config_validation()  # same verdicts; the SDK re-validated its config on every lookup (~8 s a cycle)
    boto = boto_session(settings.region, settings.docker_s3_url)
    sdk_config = load_sagemaker_config(s3_resource=boto.resource("s3"))
    session = LocalSession(boto_session=boto, s3_endpoint_url=settings.docker_s3_url, default_bucket=bucket,
                           sagemaker_config=with_telemetry_opt_out(sdk_config))
    session.config = local_mode_config(session.config, write_env_file(state_dir))
    try:
        session.default_bucket()  # creates the bucket on the compose S3; also proves it answers
    except (BotoCoreError, ClientError) as exc:
        raise ConfigError(f"the docker backend's S3 at {settings.docker_s3_url} does not answer ({exc}); "
                          + START_HINT) from None
    return session, {"s3_url": settings.docker_s3_url, "container_s3_url": CONTAINER_S3_URL, "images": images}


class DockerBackend(Backend):
    """The SDK's own LocalSession; S3 from docker-compose.yml (see the module docstring)."""

    name = "docker"
    shards_inputs = False  # the SDK's local mode refuses ShardedByS3Key (RuntimeError)
    # The SDK's LocalSession has no CloudWatch: Transformer.transform(logs=True) would ask AWS for log
    # streams with the dummy credentials. Its local transform job blocks until done anyway.
    tails_transform_logs = False

    @classmethod
    def open(cls, settings: Settings, persistent: bool = False) -> "DockerBackend":
        session, extra = open_session(settings, state_dir(settings), LOCAL_BUCKET)
        return cls(settings, session, DUMMY_ROLE, LOCAL_BUCKET, extra=extra)

    def endpoint_log_hint(self, name: str) -> str:
        return "the container's output follows here (docker compose logs)"

    def transform_results_uri(self, output_uri: str, job_name: str) -> str:
        # The SDK's local mode (sagemaker.local.utils.move_to_destination) adds the job name to S3OutputPath.
        return f"{output_uri.rstrip('/')}/{job_name}"
