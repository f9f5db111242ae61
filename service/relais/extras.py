"""Optional dependencies, by pip extra: what a command needs, checked before it does any work.

    require_extras("eval", command="relais eval")   # MissingExtras if e.g. sacrebleu is absent

The extras are not listed here a second time: their requirements are read from the
installed ``relais`` distribution's metadata (``Requires-Dist: sacrebleu; extra ==
"eval"``), or, in a checkout run without installing, from ``pyproject.toml``. A
requirement counts as met when its distribution is installed (versions are pip's
business). Nothing is imported, so a check costs milliseconds.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

DISTRIBUTION = "relais"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # checkout: service/relais/extras.py
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


class MissingExtras(RuntimeError):
    """A command's optional dependencies are not installed; the message says what to pip install."""


def extra_requirements() -> dict[str, list[str]] | None:
    """Requirement strings by extra (``{"eval": ["sacrebleu>=2.4", ...]}``), None if unknown."""
    try:
        requires = md.requires(DISTRIBUTION)
    except md.PackageNotFoundError:
        return _from_pyproject(_PYPROJECT)
    out: dict[str, list[str]] = {}
    for line in requires or []:
        requirement, _, marker = line.partition(";")
        if match := _EXTRA_MARKER.search(marker):
            out.setdefault(match.group(1), []).append(requirement.strip())
    return out


def _from_pyproject(path: Path) -> dict[str, list[str]] | None:
    import tomllib

    if not path.is_file():
        return None
    with path.open("rb") as fh:
        project = tomllib.load(fh).get("project", {})
    if project.get("name") != DISTRIBUTION:
        return None
    return {extra: list(reqs) for extra, reqs in project.get("optional-dependencies", {}).items()}


def _installed(name: str) -> bool:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


def missing_distributions(extras: Iterable[str], requirements: dict[str, list[str]],
                          installed: Callable[[str], bool] | None = None) -> dict[str, list[str]]:
    """For each extra, the distributions it needs that are not installed (``relais[x]`` expanded)."""
    out: dict[str, list[str]] = {}
    for extra in extras:
        missing = _missing(extra, requirements, installed or _installed, seen=set())
        if missing:
            out[extra] = missing
    return out


def _missing(extra: str, requirements: dict[str, list[str]], installed: Callable[[str], bool],
             seen: set[str]) -> list[str]:
    if extra in seen:
        return []
    seen.add(extra)
    missing: list[str] = []
    for requirement in requirements.get(extra, []):
        match = _NAME.match(requirement)
        if match is None:
            continue
        name, nested = match.group(1), match.group(2)
        if name == DISTRIBUTION and nested:  # "relais[eval]" inside another extra
            for inner in nested.split(","):
                missing += [m for m in _missing(inner.strip(), requirements, installed, seen) if m not in missing]
        elif not installed(name):
            missing.append(name)
    return missing


def install_command(extras: Iterable[str]) -> str:
    return f"pip install '{DISTRIBUTION}[{','.join(extras)}]'"


def require_extras(*extras: str, command: str) -> None:
    """Raise MissingExtras naming the exact ``pip install`` if any extra is not fully installed."""
    requirements = extra_requirements()
    if requirements is None:
        log.debug("relais is neither installed nor run from its checkout: optional dependencies not checked")
        return
    unknown = [e for e in extras if e not in requirements]
    if unknown:
        raise ValueError(f"unknown extra(s) {unknown}; relais has {sorted(requirements)}")  # a bug here
    missing = missing_distributions(extras, requirements)
    if missing:
        names = ", ".join(name for names in missing.values() for name in names)
        raise MissingExtras(f"{command} needs optional dependencies that are not installed ({names}); "
                            f"install them with: {install_command(missing)}")
