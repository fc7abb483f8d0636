"""The package layout rule (docs/layout.md) and the public import paths users rely on."""

from __future__ import annotations

import ast
import importlib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "dandi_icechunk"
CALLERS = ("upload", "archive", "read")


def _imported_subpackages(path: Path) -> set[str]:
    """The first component under ``dandi_icechunk`` of every module ``path`` imports."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for top-level modules
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = path.relative_to(PACKAGE).parts[:-1][: depth - (node.level - 1)]
                parts = (*parts, *(node.module or "").split(".")) if node.module else parts
                if not parts and node.names:
                    parts = (node.names[0].name,)
            elif (node.module or "").startswith("dandi_icechunk."):
                parts = tuple(node.module.split(".")[1:])
            else:
                continue
            if parts:
                found.add(parts[0])
    return found


@pytest.mark.parametrize("caller", CALLERS)
def test_caller_packages_import_only_the_core(caller: str) -> None:
    for path in (PACKAGE / caller).rglob("*.py"):
        others = _imported_subpackages(path) & ({*CALLERS, "cli", "archive_hooks"} - {caller})
        assert not others, f"{path.relative_to(PACKAGE)} reaches into {sorted(others)}"


def test_core_modules_import_no_caller_package() -> None:
    for path in PACKAGE.glob("*.py"):
        if path.name in ("archive_hooks.py", "__init__.py", "__main__.py"):
            continue
        reached = _imported_subpackages(path) & {*CALLERS, "cli", "archive_hooks"}
        assert not reached, f"core module {path.name} imports {sorted(reached)}"


@pytest.mark.parametrize(
    "module, names",
    [
        ("dandi_icechunk", ["open_dataset", "open_zarr", "open_session", "upload_zarr"]),
        ("dandi_icechunk.archive_hooks", ["publish_dandiset", "publish_tag", "PublishError",
                                          "audit_published", "collect_zarr_garbage",
                                          "protect_published", "attach_zarr_to_dandiset",
                                          "unembargo_dandiset_zarrs", "vend_upload_credentials",
                                          "finalize_upload"]),
        ("dandi_icechunk.session", ["ZarrRepository", "CommitInfo", "DEFAULT_BRANCH"]),
        ("dandi_icechunk.location", ["StorageLocation", "S3Credentials"]),
        ("dandi_icechunk.cli", ["main"]),
    ],
)
def test_public_api_importable_where_users_import_it(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    assert all(callable(getattr(imported, n)) or isinstance(getattr(imported, n), str) for n in names)


def test_xarray_engine_and_command_are_registered() -> None:
    engine = entry_points(group="xarray.backends")["dandi-icechunk"].load()
    assert engine.__name__ == "DandiIcechunkBackend"
    command = entry_points(group="console_scripts")["dandi-icechunk"].load()
    assert set(command.commands) >= {"upload", "publish", "audit", "gc", "serve", "export", "verify"}
