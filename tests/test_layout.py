"""The layout's rules, kept by the build: actors never import one another, shared packages
import no actor, the simulator stands alone, and schemas <- bus <- actors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from actors.runtime.supervisor import ACTORS

ROOT = Path(__file__).resolve().parent.parent
# The composition roots: they assemble actors, so they may import any of them.
ROOTS = {"actors.runtime.supervisor", "actors.cli", "actors.__main__"}
SHARED = {"actors.backends", "actors.store", "actors.runtime"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (for `from a import b`, both `a` and `a.b`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _room(module: str) -> str | None:
    """The actor a module belongs to (`actors.router.limits` -> `router`), if any."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "actors" and parts[1] in ACTORS:
        return parts[1]
    return None


def _within(module: str, packages: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


MODULES = {_module(p): _imports(p) for d in ("schemas", "bus", "actors") for p in (ROOT / d).rglob("*.py")}  # fmt: skip


def test_every_actor_has_its_room() -> None:
    """Each actor `ollamesh up --actors` names is a package or a module of that name."""
    for actor in ACTORS:
        assert f"actors.{actor}" in MODULES, actor


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m)))
def test_an_actor_imports_no_other_actor(module: str) -> None:
    """Actors talk over NATS only: what two of them need lives in a shared package."""
    own = _room(module)
    others = {_room(i) for i in MODULES[module]} - {None, own}
    assert not others, f"{module} imports the {sorted(others)} actor(s)"  # type: ignore[type-var]


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if _within(m, SHARED) and m not in ROOTS)
)
def test_shared_packages_import_no_actor(module: str) -> None:
    """The backends, the store and the runtime serve actors; they never import one."""
    assert not {i for i in MODULES[module] if _room(i)}, module


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _within(m, {"actors.simulator"})))
def test_the_simulator_stands_alone(module: str) -> None:
    """The simulator imports nothing of ollamesh but itself: it is a product of its own."""
    ours = {i for i in MODULES[module] if i.split(".")[0] in ("actors", "bus", "schemas")}
    assert all(_within(i, {"actors.simulator"}) for i in ours), sorted(ours)


@pytest.mark.parametrize(
    ("layer", "may_use"),
    [("schemas", {"schemas"}), ("bus", {"schemas", "bus"})],
)
def test_the_dependency_direction(layer: str, may_use: set[str]) -> None:
    """schemas imports nothing of ours; bus imports schemas; neither imports actors."""
    for module, imports in MODULES.items():
        if module.split(".")[0] == layer:
            ours = {i.split(".")[0] for i in imports} & {"actors", "bus", "schemas"}
            assert ours <= may_use, (module, ours)
