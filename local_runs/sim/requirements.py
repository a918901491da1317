"""Check a ``requirements.txt`` against the host environment instead of pip-installing it.

The real containers run ``pip install -r requirements.txt``. In sim the job runs in the
host environment, which already holds the packages; installing into it from a job would be
a slow, surprising side effect. So sim verifies every requirement (name, version specifier,
extras, environment markers; ``-r`` includes followed) with importlib.metadata + packaging
and fails with a message naming what is missing.
"""
from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement

_OPTIONS_WITH_VALUE = re.compile(
    r"^(-i|--index-url|--extra-index-url|-f|--find-links|--trusted-host|-c|--constraint|"
    r"--no-binary|--only-binary|--prefer-binary|--pre|--no-index|--use-feature|--hash)\b"
)


class RequirementsNotSatisfied(RuntimeError):
    """Some requirements are not installed (or not at a matching version) on the host."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__(
            f"{path} is not satisfied by the host environment ({sys.executable}); sim does not "
            f"pip-install requirements. Missing or mismatched: {'; '.join(problems)}. "
            "Install them into that environment (e.g. `pip install -r requirements.txt`) "
            "and run again."
        )


def _lines(path: Path, seen: set[Path]):
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", "", text)  # line continuations
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        include = re.match(r"^(-r|--requirement)\s*=?\s*(\S+)$", line)
        if include:
            yield from _lines(path.parent / include.group(2), seen)
            continue
        yield line


def check_requirement(requirement: Requirement, env: dict[str, str] | None = None) -> str | None:
    """None when ``requirement`` is satisfied on the host, else a short description why not."""
    env = env or default_environment()
    if requirement.marker is not None and not requirement.marker.evaluate(env):
        return None
    try:
        dist = metadata.distribution(requirement.name)
    except metadata.PackageNotFoundError:
        return f"{requirement} (not installed)"
    version = dist.version
    if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
        return f"{requirement} (installed: {version})"
    for extra in sorted(requirement.extras):
        for dep_text in dist.requires or []:
            dep = Requirement(dep_text)
            if dep.marker is None or not dep.marker.evaluate({**env, "extra": extra}):
                continue
            if dep.marker.evaluate({**env, "extra": ""}):
                continue  # not specific to this extra
            problem = check_requirement(Requirement(str(dep).split(";")[0]), env)
            if problem:
                return f"{requirement}: extra [{extra}] needs {problem}"
    return None


def unsatisfied(path: str | os.PathLike) -> list[str]:
    """Descriptions of the requirements in ``path`` the host does not satisfy ([] = all fine)."""
    problems: list[str] = []
    for line in _lines(Path(path), set()):
        if _OPTIONS_WITH_VALUE.match(line):
            continue
        if line.startswith(("-e", "--editable")) or line.startswith("-"):
            problems.append(f"{line!r} (sim cannot verify pip options, editable or path installs)")
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            problems.append(f"{line!r} (not a name-based requirement; sim cannot verify it)")
            continue
        problem = check_requirement(requirement)
        if problem:
            problems.append(problem)
    return problems


def ensure_satisfied(path: str | os.PathLike) -> None:
    """Raise RequirementsNotSatisfied unless every requirement in ``path`` is met."""
    problems = unsatisfied(path)
    if problems:
        raise RequirementsNotSatisfied(str(path), problems)

