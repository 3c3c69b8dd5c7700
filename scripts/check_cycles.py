"""Fail on any import cycle between modules of our packages (run by scripts/check).

import-linter's ``acyclic_siblings`` contract (pyproject.toml) forbids cycles between the
modules and subpackages of each package, but it does not see a cycle through a package's own
``__init__`` (``blade`` -> ``blade._artifact`` -> ``blade``): that is a cycle at import time all
the same, and only a module-level search finds it. Every import counts, those under
``TYPE_CHECKING`` and inside functions included: each one is a dependency a reader must follow.

    python scripts/check_cycles.py       # prints each cycle's modules; exit status 1 if any
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import grimp

PACKAGES = (
    "config_store",
    "eas_client",
    "eas_server",
    "blade",
    "blade_client",
    "blade_aspect",
    "autoai",
)


def cycles(imports: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative:
    the graph is deep enough to exhaust Python's recursion limit), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = imports.get(node, ())
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:  # done with node: its caller takes its low link
                caller = work[-1][0]
                low[caller] = min(low[caller], low[node])
    return sorted(found)


def main() -> int:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)  # fast enough uncached
    imports = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    found = cycles(imports)
    for component in found:
        print(f"import cycle between {len(component)} modules:", file=sys.stderr)
        for module in component:
            inside = [m for m in imports[module] if m in component]
            print(f"  {module} -> {', '.join(inside)}", file=sys.stderr)
    if not found:
        print(f"no import cycle among the modules of {', '.join(PACKAGES)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
