"""Bad reviews files and killed training jobs, through the real entry point and the sim backend.

One SDK session (in-process S3) for every training failure: each job must end Failed with a
FailureReason that names the row/column and says what to do, and must leave no model.tar.gz in the
bucket. The CLI turns the same failure into one line on stderr and a non-zero exit. A training job
killed half-way (the user script, or the toolkit process that runs it) also leaves nothing partial in
S3 and no process or temp dir behind.
"""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from sagemaker.exceptions import UnexpectedStatusException

from conftest import FIXTURES, ROOT
from local_runs import job

pytestmark = pytest.mark.integration

HEADER = "review_id,product_id,product_title,star_rating,review_headline,review_body\n"
GOOD_ROWS = FIXTURES.joinpath("reviews.csv").read_text().splitlines(keepends=True)[1:12]


def _csv(rows: str) -> bytes:
    return (HEADER + rows).encode()


def _truncated_gzip() -> bytes:
    data = FIXTURES.joinpath("reviews.tsv.gz").read_bytes()
    return data[: len(data) // 2]


def _mixed_encodings() -> bytes:
    # Most rows UTF-8; row 4 was pasted from a Latin-1 file ("café" as a single 0xE9 byte).
    return (HEADER + "".join(GOOD_ROWS[:3])).encode() + "R9001,P001,Sub,5,Nice,Great caf\u00e9 toy\n".encode("latin-1")


# name, file name, content, fragments the FailureReason must hold (where + what to do)
BAD_FILES = [
    ("missing-columns", "no_rating.csv", b"review_id,product_id,review_body\nR1,P1,Nice toy\n",
     ["missing column(s) star_rating", "expected the 6-column CSV"]),
    ("wrong-type", "words.csv", _csv("R1,P1,Kite,5,Fun,Flies well\nR2,P1,Kite,five,Meh,It broke\n"),
     ["data row 2", "review_id 'R2'", "star_rating 'five'", "whole numbers from 1 to 5"]),
    ("out-of-range", "seven.csv", _csv("R1,P1,Kite,7,Fun,Flies well\n"),
     ["data row 1", "star_rating '7'", "whole numbers from 1 to 5"]),
    ("duplicate-ids", "dups.csv", _csv("R1,P1,Kite,5,Fun,Flies well\nR2,P1,Kite,4,Ok,Fine\nR1,P2,Ball,3,Meh,Bounces\n"),
     ["duplicate review_id 'R1'", "data row 3", "must be unique"]),
    ("empty-id", "noid.csv", _csv("R1,P1,Kite,5,Fun,Flies well\nR2,,Kite,4,Ok,Fine\n"),
     ["data row 2", "empty product_id", "every review needs one"]),
    ("empty-file", "empty.csv", b"", ["the file is empty", "header and rows"]),
    ("header-only", "header.csv", HEADER.encode(), ["has a header but no reviews"]),
    ("cut-off-gzip", "cut.tsv.gz", _truncated_gzip(), ["gzip data is cut off or corrupt", "re-download"]),
    ("mixed-encodings", "mixed.csv", _mixed_encodings(), ["line 5 is not valid UTF-8", "save the file as UTF-8"]),
    ("ragged-row", "ragged.csv", _csv("R1,P1,Kite,5,Fun,Flies well\nR2,P1,Kite,4,Ok,Fine, but, unquoted\n"),
     ["line 3", "double quotes"]),
]


def bucket_keys(backend) -> list[str]:
    client = backend.session.s3_client
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=backend.bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def assert_no_model_in_s3(backend, job_name: str) -> None:
    keys = [k for k in bucket_keys(backend) if k.startswith(f"{job_name}/")]
    assert keys == [f"{job_name}/source/sourcedir.tar.gz"], keys  # the code only: no model.tar.gz, no output


def assert_no_job_leftovers(backend) -> None:
    work = backend.session.state_dir / "work"
    left = list(work.iterdir()) if work.is_dir() else []
    assert left == [], left  # the job's temp dirs (config, data, model, output) are gone


@pytest.mark.parametrize("name, filename, content, fragments", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_reviews_file_fails_training_clearly(backend, tmp_path, name, filename, content, fragments):
    path = tmp_path / filename
    path.write_bytes(content)
    started = time.monotonic()
    with pytest.raises(UnexpectedStatusException) as info:
        job.fit(backend, backend.upload(path, prefix=f"bad/{name}"))
    job_name = str(info.value).split("Training job ", 1)[1].split(":", 1)[0]
    reason = backend.session.sagemaker_client.describe_training_job(TrainingJobName=job_name)["FailureReason"]
    assert len(reason) <= 1024
    for fragment in fragments:
        assert fragment in reason, reason
    assert "Traceback" not in reason, reason
    assert_no_model_in_s3(backend, job_name)
    assert_no_job_leftovers(backend)
    assert time.monotonic() - started < 60


def test_cli_fit_with_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "dups.csv"
    bad.write_bytes(BAD_FILES[3][2])
    state = tmp_path / "state"
    try:
        out = subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", str(state), "fit", "--reviews", str(bad)],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 1, out.stderr[-2000:]
        assert len(lines) == 1, out.stderr[-3000:]
        assert lines[0].startswith("local-runs fit: error:") and "Traceback" not in out.stderr + out.stdout
        assert "duplicate review_id 'R1'" in lines[0] and "must be unique" in lines[0]
        assert not (state / "last_model.json").exists()  # a failed fit is never remembered
        # and a wrong path is one line too, before anything starts
        out = subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", str(state), "fit", "--reviews",
                              str(tmp_path / "nope.csv")], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and "does not exist" in out.stderr
    finally:
        subprocess.run([sys.executable, "-m", "local_runs", "--state-dir", str(state), "shutdown"], cwd=ROOT,
                       capture_output=True, timeout=120)


def _descendants():
    return psutil.Process().children(recursive=True)


def _kill_when_running(which: str, found: dict, stop: threading.Event) -> None:
    """SIGKILL the training script ("script") or the toolkit process ("toolkit") once the script runs."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stop.is_set():
        for proc in _descendants():
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "entry_point.py" in cmdline:
                _wait_until_busy(proc, cpu_seconds=1.0)  # half-way: the script is reading and encoding
                target = proc if which == "script" else psutil.Process(os.getpgid(proc.pid))
                found["killed"] = target.pid
                found["group"] = [p for p in _descendants() if _same_group(p, os.getpgid(proc.pid))]
                target.send_signal(signal.SIGKILL)
                return
        time.sleep(0.05)


def _wait_until_busy(proc: psutil.Process, cpu_seconds: float, timeout: float = 60) -> None:
    """Poll until ``proc`` has used ``cpu_seconds`` of CPU (it is past its start-up), or is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            return
        if times.user + times.system >= cpu_seconds:
            return
        time.sleep(0.05)


def _same_group(proc, pgid) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except OSError:
        return False


@pytest.mark.parametrize("which", ["script", "toolkit"])
def test_training_killed_half_way_leaves_nothing(backend, which):
    uri = backend.upload(FIXTURES / "reviews.csv", prefix=f"killed/{which}")
    found, stop = {}, threading.Event()
    killer = threading.Thread(target=_kill_when_running, args=(which, found, stop), daemon=True)
    killer.start()
    try:
        with pytest.raises(UnexpectedStatusException) as info:
            job.fit(backend, uri)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert found.get("killed"), "the training script was never seen running"
    message = str(info.value)
    assert "Failed. Reason:" in message and "MaxRuntimeExceeded" not in message, message
    if which == "script":  # the toolkit saw its child die and says so
        assert "ExitCode -9" in message, message
    else:  # the toolkit itself died: sim names the signal and what to do
        assert "killed by SIGKILL" in message and "run it again" in message, message
    job_name = message.split("Training job ", 1)[1].split(":", 1)[0]
    assert_no_model_in_s3(backend, job_name)
    _gone, alive = psutil.wait_procs(found["group"], timeout=10)
    assert not alive, alive  # nothing of the job's process group survives
    assert_no_job_leftovers(backend)


def test_gzip_and_encoding_fixtures_are_what_they_claim():
    """Guard the table above: the cut gzip really is cut, the mixed file really has a Latin-1 byte."""
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(_truncated_gzip())
    with pytest.raises(UnicodeDecodeError):
        _mixed_encodings().decode("utf-8")
