"""Several "instances" of one job: host names, input sharding, and running N host processes.

SageMaker runs a job with ``InstanceCount`` N on hosts ``algo-1`` ... ``algo-N`` (the SDK's local
mode names them ``algo-<i>-<5 random chars>``, and so does sim). Each host has its own ``/opt/ml``
tree; sim gives each its own directory under the job's temp root.

Input distribution (``S3DataDistributionType``):

* ``FullyReplicated``: every host gets every object of the prefix.
* ``ShardedByS3Key``: the objects are dealt to the hosts. SageMaker documents only that each host
  gets about 1/N of the objects; sim deals them round-robin in key order (object i -> host i mod
  N). A host that gets no object runs with an empty channel directory. Job code must not depend
  on which host gets which object.

``run_hosts`` starts one process per host (each in its own process group, as ``procs.spawn``),
waits for all of them, and stops the others as soon as one fails: the job fails naming that
host. Ctrl-C (or ``stop``) stops every host.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field

from local_runs.sim import procs

FULLY_REPLICATED = "FullyReplicated"
SHARDED = "ShardedByS3Key"
DISTRIBUTIONS = (FULLY_REPLICATED, SHARDED)


def host_names(count: int, suffix: str) -> list[str]:
    """``algo-1-<suffix>`` ... ``algo-N-<suffix>``, as the SDK's local mode names its containers."""
    return [f"algo-{i}-{suffix}" for i in range(1, int(count) + 1)]


def relative_files(root: str) -> list[str]:
    """Every file under ``root`` as a path relative to it, sorted (= S3 key order under a prefix)."""
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found, key=lambda p: p.replace(os.sep, "/"))


def deal(items: list[str], count: int) -> list[list[str]]:
    """``items`` (sorted by key) dealt round-robin to ``count`` hosts; host i gets items i, i+N, ..."""
    return [list(items[i::count]) for i in range(count)]


def shard_dir(source_root: str, files: list[str], target: str) -> str:
    """A directory holding only ``files`` (relative to ``source_root``): hard links, else copies."""
    os.makedirs(target, exist_ok=True)
    for rel in files:
        src, dst = os.path.join(source_root, rel), os.path.join(target, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return target


def check_distribution(kind: str | None, what: str) -> str:
    kind = kind or FULLY_REPLICATED
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"{what}: S3DataDistributionType {kind!r} is not one of {', '.join(DISTRIBUTIONS)}")
    return kind


@dataclass
class HostSpec:
    host: str
    argv: list[str]
    env: dict[str, str]
    cwd: str


@dataclass
class HostOutcome:
    """What became of each host: exit codes, the first host that failed, why the run ended."""

    exit_codes: dict[str, int | None] = field(default_factory=dict)
    failed_host: str | None = None
    timed_out: bool = False
    stopped: bool = False
    tails: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed_host is None and not self.timed_out and not self.stopped


def describe_exit(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return (f"was killed by {name} (exit code {exit_code}) from outside the job, e.g. by the "
                "out-of-memory killer or a user")
    if exit_code is not None and 128 < exit_code <= 128 + 64:  # a shell reporting its child's signal
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            return f"exited with code {exit_code}"
        return (f"exited with code {exit_code} (128 + {name}: a process of the job was killed, e.g. by the "
                "out-of-memory killer or a user)")
    return f"exited with code {exit_code}"


class HostGroup:
    """N host processes of one job; ``wait`` returns a ``HostOutcome``; ``stop`` ends them all."""

    def __init__(self, specs: list[HostSpec], max_runtime: float | None = None, poll: float = 0.05):
        self.specs = specs
        self.max_runtime = float(max_runtime) if max_runtime else None
        self.poll = poll
        self._procs: dict[str, tuple] = {}
        self._stop = threading.Event()

    def start(self) -> "HostGroup":
        try:
            for spec in self.specs:
                self._procs[spec.host] = procs.spawn(spec.argv, spec.env, cwd=spec.cwd, echo=True)
        except BaseException:
            self._stop_all()
            raise
        return self

    def stop(self) -> None:
        """Ask the group to stop every host (from any thread); ``wait`` then returns ``stopped``."""
        self._stop.set()

    def wait(self) -> HostOutcome:
        outcome = HostOutcome()
        deadline = time.monotonic() + self.max_runtime if self.max_runtime else None
        try:
            while True:
                running = False
                for host, (proc, _pump) in self._procs.items():
                    code = proc.poll()
                    if code is None:
                        running = True
                    elif host not in outcome.exit_codes:
                        outcome.exit_codes[host] = code
                        if code != 0 and outcome.failed_host is None:
                            outcome.failed_host = host
                if outcome.failed_host is not None or not running:
                    break
                if self._stop.is_set():
                    outcome.stopped = True
                    break
                if deadline is not None and time.monotonic() > deadline:
                    outcome.timed_out = True
                    break
                time.sleep(self.poll)
        finally:
            self._stop_all()  # KeyboardInterrupt included: every host goes
        for host, (proc, pump) in self._procs.items():
            outcome.exit_codes.setdefault(host, proc.returncode)
            outcome.tails[host] = "".join(list(pump.tail)[-20:]) if pump else ""
        return outcome

    def _stop_all(self) -> None:
        for _host, (proc, pump) in self._procs.items():
            if proc.poll() is None:
                procs.stop(proc.pid, timeout=5)
            procs.unregister(proc.pid)
            procs.kill_group(proc.pid)  # anything a script left behind in the host's group
            try:
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - already SIGKILLed by stop
                pass
            if pump is not None:
                pump.join(timeout=10)
