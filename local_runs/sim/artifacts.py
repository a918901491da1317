"""A finished training job's artifacts, packed as SageMaker packs them: every host's ``/opt/ml/model`` into
one ``model.tar.gz`` and every host's ``/opt/ml/output`` into ``output.tar.gz``, uploaded under
``<S3OutputPath>/<job>/output/``.

This is the platform's part of the contract, which sim plays; the SDK's local mode does the same in
``_SageMakerContainer.retrieve_artifacts``, but copies every file once more and gzips at level 9
(``sagemaker.utils.create_tar_file``, which takes no level). A model dir is almost all incompressible
bytes (the encoder's float weights, float16 vectors, Parquet that is compressed already), so sim
stores the files in the gzip stream uncompressed (level 0: still a gzip file that every reader
takes). Measured on the 90 MB encoder, on 2 busy cores: level 9 8.6 s and 83 MB, level 1 6.5 s and
83 MB, level 0 0.5 s and 91 MB; unpacking 1.2 s against 0.5 s.
"""
from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import time

import sagemaker.local.utils

logger = logging.getLogger(__name__)

COMPRESS_LEVEL = 0


def _directories(compose_data: dict, hosts: list[str], container_dir: str) -> list[str]:
    """Each host's host-side directory mounted at `container_dir`."""
    found = []
    for host in hosts:
        for volume in compose_data["services"][str(host)]["volumes"]:
            volume = volume[:-2] if volume.endswith(":z") else volume
            host_dir, mounted = volume.rsplit(":", 1)
            if mounted == container_dir:
                found.append(host_dir)
    return list(dict.fromkeys(found))  # one host's tree, or a dir shared by hosts, once


def pack(directories: list[str], target: str) -> None:
    """One archive of the files of every directory, each at the archive's root (names do not clash:
    the container checks that first)."""
    with tarfile.open(target, "w:gz", compresslevel=COMPRESS_LEVEL, dereference=True) as archive:
        for directory in directories:
            for name in sorted(os.listdir(directory)):
                archive.add(os.path.join(directory, name), arcname=name)


def retrieve(container_root: str, hosts: list[str], compose_data: dict, output_data_config: dict, job_name: str,
             session) -> str:
    """Pack the job's model and output, move them to the job's output location; the model.tar.gz URI."""
    compressed = tempfile.mkdtemp(prefix="compressed_artifacts-", dir=container_root)
    started = time.perf_counter()
    pack(_directories(compose_data, hosts, "/opt/ml/model"), os.path.join(compressed, "model.tar.gz"))
    pack(_directories(compose_data, hosts, "/opt/ml/output"), os.path.join(compressed, "output.tar.gz"))
    logger.info("sim: packed model.tar.gz (%.1f MB) in %.1f s",
                os.path.getsize(os.path.join(compressed, "model.tar.gz")) / 1e6, time.perf_counter() - started)
    if output_data_config["S3OutputPath"] == "":
        output_data = "file://%s" % compressed
    else:
        output_data = sagemaker.local.utils.move_to_destination(
            compressed, output_data_config["S3OutputPath"], job_name, session, prefix="output")
    return os.path.join(output_data, "model.tar.gz")
