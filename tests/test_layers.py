"""The layers, kept by an `ast` walk: dependencies point down.

    ipc                 what two processes must agree on          imports ipc
    kernel              the kernel process                        ipc, kernel
    miniports core      the contract, the host, the miniports     ipc, miniports core
    SDK                 ksclient without ksclient.cli             ipc, SDK
    miniports.testing   what a miniport author runs               ipc, miniports, SDK
    ksclient.cli        the portcls command                       everything

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`,
and `importlib.import_module("...")` / `__import__("...")` with a literal name. An
import is first-party when its top-level name is ipc, kernel, miniports or ksclient;
everything else (the standard library, third-party packages) is allowed everywhere.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("ipc", "kernel", "miniports", "ksclient")

IPC = "ipc"
KERNEL = "kernel"
MINIPORTS = "miniports core"
SDK = "SDK"
TESTING = "miniports.testing"
CLI = "ksclient.cli"

ALLOWED: dict[str, frozenset[str]] = {
    IPC: frozenset({IPC}),
    KERNEL: frozenset({IPC, KERNEL}),
    MINIPORTS: frozenset({IPC, MINIPORTS}),
    SDK: frozenset({IPC, SDK}),
    TESTING: frozenset({IPC, MINIPORTS, TESTING, SDK}),
    CLI: frozenset({IPC, KERNEL, MINIPORTS, TESTING, SDK, CLI}),
}

SHIMS: dict[str, str] = {
    "miniports.faults": "miniports.testing.faults",
    "miniports.jackbed": "miniports.testing.jack",
}
"""Old module paths kept for configurations and outside code. Each only re-exports its
new home (checked below), so it belongs to that module's layer."""


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> str | None:
    """The layer of a first-party module; None for anything else."""
    module = SHIMS.get(module, module)
    if _within(module, "miniports.testing"):
        return TESTING
    if _within(module, "ksclient.cli"):
        return CLI
    return {"ipc": IPC, "kernel": KERNEL, "miniports": MINIPORTS, "ksclient": SDK}.get(
        module.partition(".")[0]
    )


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    importer: str
    target: str
    type_checking: bool

    def __str__(self) -> str:
        how = " (under TYPE_CHECKING)" if self.type_checking else ""
        return (
            f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} "
            f"[{layer_of(self.importer)}] imports {self.target} [{layer_of(self.target)}]{how}"
        )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, path: Path, module: str, modules: set[str]) -> None:
        self.path, self.module, self.modules = path, module, modules
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.type_checking = False
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str) -> None:
        if target.partition(".")[0] in PACKAGES:
            line = getattr(node, "lineno", 0)
            self.found.append(Import(self.path, line, self.module, target, self.type_checking))

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer, self.type_checking = self.type_checking, True
        for statement in node.body:
            self.visit(statement)
        self.type_checking = outer
        for statement in node.orelse:
            self.visit(statement)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.package.split(".")
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        for alias in node.names:
            # `from miniports import testing` imports the module miniports.testing.
            submodule = f"{base}.{alias.name}"
            self._add(node, submodule if submodule in self.modules else base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (
            name in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def _files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _all_imports() -> list[Import]:
    files = list(_files())
    modules = {_module_name(path) for path in files}
    found: list[Import] = []
    for path in files:
        visitor = _Imports(path, _module_name(path), modules)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        found += dict.fromkeys(visitor.found)  # `from m import a, b` is one import of m
    return found


IMPORTS = _all_imports()


def _violations(layer: str) -> list[str]:
    return [
        str(imp) for imp in IMPORTS
        if layer_of(imp.importer) == layer and layer_of(imp.target) not in ALLOWED[layer]
    ]


def test_the_walk_sees_every_layer() -> None:
    layers = {layer_of(_module_name(path)) for path in _files()}
    assert layers == set(ALLOWED)
    assert any(imp.type_checking for imp in IMPORTS)
    assert any(imp.target == "ksclient.launch" for imp in IMPORTS)


def test_ipc_imports_only_ipc() -> None:
    assert not _violations(IPC), "\n".join(_violations(IPC))


def test_kernel_imports_only_ipc_and_kernel() -> None:
    assert not _violations(KERNEL), "\n".join(_violations(KERNEL))


def test_miniports_core_imports_only_ipc_and_miniports_core() -> None:
    assert not _violations(MINIPORTS), "\n".join(_violations(MINIPORTS))


def test_the_sdk_imports_only_ipc_and_the_sdk() -> None:
    assert not _violations(SDK), "\n".join(_violations(SDK))


def test_miniports_testing_imports_no_kernel_and_no_cli() -> None:
    assert not _violations(TESTING), "\n".join(_violations(TESTING))


def test_no_package_cycle_between_miniports_and_ksclient() -> None:
    cycle = [
        str(imp) for imp in IMPORTS
        if (layer_of(imp.importer) == MINIPORTS and _within(imp.target, "ksclient"))
        or (layer_of(imp.importer) == SDK and _within(imp.target, "miniports"))
    ]
    assert not cycle, "\n".join(cycle)


def test_shims_only_re_export_their_new_home() -> None:
    for old, new in SHIMS.items():
        path = ROOT.joinpath(*old.split(".")).with_suffix(".py")
        body = ast.parse(path.read_text()).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        assert len(body) == 1, f"{old} is more than a shim"
        statement = body[0]
        assert isinstance(statement, ast.ImportFrom), f"{old} is more than a shim"
        assert (statement.module, [a.name for a in statement.names]) == (new, ["*"])


def test_kernel_modules_do_not_need_each_other_for_types() -> None:
    """Components hold the loop and a callback or two, not the kernel: no kernel module
    imports another one just to name its type."""
    found = [
        str(imp) for imp in IMPORTS
        if imp.type_checking and layer_of(imp.importer) == KERNEL
        and layer_of(imp.target) == KERNEL
    ]
    assert not found, "\n".join(found)


def test_no_kernel_module_is_a_god_object() -> None:
    """The kernel is split by what PortCls splits: no file in kernel/ over 450 lines."""
    long = {
        path.name: n for path in (ROOT / "kernel").glob("*.py")
        if (n := len(path.read_text().splitlines())) > 450
    }
    assert not long, long
