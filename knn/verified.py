"""A record of the model dirs whose files were already checked against their manifest, so that the
workers of one endpoint (each runs `model_fn`, and so `load_model_dir`) hash a model once, not once each.

`checking` says whether a model dir needs hashing; after a full check that passed it writes a stamp:
the manifest's sha256 and, for every listed file, its device, inode, size, mtime and ctime
(nanoseconds). A later load skips the hashing only while every file still has exactly those: a file rewritten in place changes its ctime (which no user-space call can set back), a
file replaced changes its inode, so any change to a file after the check sends the next load back to
hashing. Stamps live in a per-user directory of the temporary directory (mode 0700; one that is not
ours, or that others may write, is not trusted and nothing is skipped); a lock makes the workers that
start together wait for the first one's check instead of all hashing at once.

No library fits: this is a cache of one fact (these inodes were verified) for a few processes on one
machine; `REVIEW_SEARCH_VERIFIED_DIR` moves it, `REVIEW_SEARCH_VERIFY_ALWAYS=1` switches it off.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

STAMP_FORMAT = 1


def stamp_dir() -> Path | None:
    """Where stamps are kept, or None when stamps are switched off or the directory cannot be trusted."""
    if os.environ.get("REVIEW_SEARCH_VERIFY_ALWAYS", "") not in ("", "0"):
        return None
    directory = Path(os.environ.get("REVIEW_SEARCH_VERIFIED_DIR")
                     or Path(tempfile.gettempdir()) / f"review-search-verified-{os.getuid()}")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return directory


def fingerprint(directory: Path, manifest_bytes: bytes, listed: list[str]) -> dict | None:
    """What a stamp records for `directory` now; None when a listed file is missing (the full check says so)."""
    files = {}
    for relative in sorted(listed):
        try:
            info = os.stat(directory / relative)
        except OSError:
            return None
        files[relative] = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    return {"format": STAMP_FORMAT, "directory": str(directory.resolve()),
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "files": files}


def _stamp_path(stamps: Path, print_: dict) -> Path:
    key = hashlib.sha256(f"{print_['directory']}\0{print_['manifest_sha256']}".encode()).hexdigest()[:32]
    return stamps / f"{key}.json"


@contextlib.contextmanager
def checking(directory: Path, manifest_bytes: bytes, listed: list[str]):
    """Yields True when `directory` was already checked and is unchanged since; otherwise yields False,
    and the caller checks every file: when it returns without raising, the stamp is written. Holds a
    lock per model dir meanwhile, so that concurrent loads wait for one check."""
    stamps = stamp_dir()
    print_ = fingerprint(directory, manifest_bytes, listed)
    if stamps is None or print_ is None:
        yield False
        return
    path = _stamp_path(stamps, print_)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded == print_:
            yield True
            return
        yield False
        temporary = path.with_suffix(f".{os.getpid()}.tmp")  # reached only when the check passed
        temporary.write_text(json.dumps(print_))
        os.replace(temporary, path)
