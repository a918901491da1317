"""A stand-in `docker` CLI for testing the docker backend without a Docker engine.

The SageMaker SDK's local mode drives Docker only through the `docker` command: `docker compose
version`, `docker info`, `docker context inspect`, `docker images -q`, `docker pull`, `docker login`
and `docker compose -f <its compose file> up ...`. `install(directory)` writes a `docker` script
that answers those the way an engine would, so everything above the CLI -- the SDK, its compose
files, the backend's config -- runs for real:

* `compose up` of a training service records the compose file, the mounted hyperparameters and
  input files, writes a small model into the mounted /opt/ml/model and exits 0;
* `compose up` of a serving service records the same, then serves /ping and /invocations on the
  published port (answering with what it saw in /opt/ml/model) until it is terminated.

Every call is logged as JSON lines in `$FAKE_DOCKER_LOG/calls.jsonl`, compose runs as
`$FAKE_DOCKER_LOG/<train|serve>-<n>.json`. `FAKE_DOCKER_ENGINE=down` makes it behave like a CLI
whose engine does not answer; `FAKE_DOCKER_IMAGES=missing` like one without the AWS images;
`FAKE_DOCKER_COMPOSE_VERSION` is what `docker compose version` prints (default: v2.29.7).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SCRIPT = r'''
import json, os, sys, time
from pathlib import Path

LOG = Path(os.environ["FAKE_DOCKER_LOG"])
LOG.mkdir(parents=True, exist_ok=True)
args = sys.argv[1:]
with open(LOG / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"


def engine_down():
    if os.environ.get("FAKE_DOCKER_ENGINE") == "down":
        print(DOWN, file=sys.stderr)
        sys.exit(1)


def volumes(service):
    found = {}
    for spec in service.get("volumes", []):
        host, container = spec.split(":")[:2]
        found[container] = host
    return found


def record(kind, compose, extra):
    n = len(list(LOG.glob(kind + "-*.json")))
    (LOG / f"{kind}-{n}.json").write_text(json.dumps({"compose": compose, **extra}, indent=1))


def files_under(path):
    root = Path(path)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def compose_up(path):
    import yaml

    compose = yaml.safe_load(open(path))
    (name, service), = compose["services"].items()
    mounts = volumes(service)
    if service.get("command") == "train":
        config = Path(mounts["/opt/ml/input"]) / "config"
        record("train", compose, {
            "volumes": mounts,
            "hyperparameters": json.loads((config / "hyperparameters.json").read_text()),
            "input_files": sorted(f"{c.rsplit('/', 1)[1]}/{f}" for c, h in mounts.items()
                                  if c.startswith("/opt/ml/input/data/") for f in files_under(h)),
            "env_files": {p: Path(p).read_text() for p in service.get("env_file", [])},
        })
        model = Path(mounts["/opt/ml/model"])
        model.mkdir(parents=True, exist_ok=True)  # docker creates a missing bind-mount source
        (model / "model.json").write_text(json.dumps({"trained_by": "fake docker"}))
        print(f"{name} | fake training done", flush=True)
        return 0
    port = int(service["ports"][0].split(":")[0])
    model_files = files_under(mounts["/opt/ml/model"])
    record("serve", compose, {"model_files": model_files,
                              "env_files": {p: Path(p).read_text() for p in service.get("env_file", [])}})
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200 if self.path == "/ping" else 404, {})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
            self._send(200, {"pred0": {"review_id": "R1", "product_id": "P1", "product_title": "Fake Product",
                                       "star_rating": 5, "review_headline": "h", "review_body": "b",
                                       "product_search_score": 0.5, "matched_sentence": str(body),
                                       "model_files": model_files}})

    import signal

    import threading

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # like compose stopping its containers
    parent = os.getppid()

    def watchdog():  # never outlive the test process, even one that died before deleting the endpoint
        deadline = time.time() + 600
        while os.getppid() == parent and time.time() < deadline:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"{name} | fake serving on {port}", flush=True)
    server.serve_forever()


if args[:2] == ["compose", "version"]:
    print(os.environ.get("FAKE_DOCKER_COMPOSE_VERSION", "Docker Compose version v2.29.7"))
elif args[:1] == ["info"]:
    engine_down()
    print("28.2.2" if "--format" in args else "Server Version: 28.2.2\n Cgroup Driver: systemd")
elif args[:2] == ["context", "inspect"]:
    print(json.dumps([{"Name": "default", "Endpoints": {"docker": {"Host": "unix:///var/run/docker.sock"}}}]))
elif args[:1] == ["images"]:
    engine_down()
    print("" if os.environ.get("FAKE_DOCKER_IMAGES") == "missing" else "0123456789ab")
elif args[:1] in (["pull"], ["login"]):
    engine_down()
    sys.stdin.read() if args[:1] == ["login"] else None
elif args[:1] == ["compose"] and "up" in args:
    engine_down()
    sys.exit(compose_up(args[args.index("-f") + 1]))
elif args[:1] == ["compose"]:
    pass
else:
    print("fake docker: unknown command " + " ".join(args), file=sys.stderr)
    sys.exit(2)
'''


def install(directory: str | os.PathLike) -> Path:
    """Write the fake `docker` into `directory`; returns its path (put the directory on PATH)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "docker"
    path.write_text(f"#!{sys.executable}\n{SCRIPT}")
    path.chmod(0o755)
    return path


def records(log_dir: str | os.PathLike, kind: str) -> list[dict]:
    """The recorded compose runs of one kind ("train" or "serve"), oldest first."""
    paths = sorted(Path(log_dir).glob(f"{kind}-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [json.loads(p.read_text()) for p in paths]


def calls(log_dir: str | os.PathLike) -> list[list[str]]:
    path = Path(log_dir) / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def activate(tmp_path, monkeypatch, bucket: str):
    """Fake docker on PATH, a moto S3 standing in for docker-compose.yml's, a free serving port.

    Returns (log_dir, LocalS3 started -- the caller stops it, serving_port). The SDK's pauses
    while a local endpoint starts (5 s between health checks, 30 s before the first status look)
    are shortened.
    """
    import time
    import types

    import sagemaker
    import sagemaker.local
    import sagemaker.local.entities

    from local_runs.backends import docker as docker_mode
    from local_runs.s3_server import LocalS3

    bin_dir, log_dir = Path(tmp_path) / "fake-bin", Path(tmp_path) / "fake-docker-log"
    install(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log_dir))
    port = free_port()
    original = docker_mode.local_mode_config

    def with_port(user_config, env_file):
        config = original(user_config, env_file)
        config["local"]["serving_port"] = port
        return config

    monkeypatch.setattr(docker_mode, "local_mode_config", with_port)
    monkeypatch.setattr(sagemaker.local.entities, "time",
                        types.SimpleNamespace(sleep=lambda s: time.sleep(min(s, 0.05)), time=time.time))
    # Session.wait_for_endpoint sleeps 30 s before its first look, even in local mode
    wait = sagemaker.Session.wait_for_endpoint
    monkeypatch.setattr(sagemaker.local.LocalSession, "wait_for_endpoint",
                        lambda self, endpoint, poll=30, live_logging=False: wait(self, endpoint, 0.01, live_logging))
    s3 = LocalS3(bucket=bucket, set_environ=False).start()
    return log_dir, s3, port
