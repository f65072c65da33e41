"""The house's rule, checked on the code: a room imports only rooms below it, and nothing imports a command.

Rooms, lowest first (README, "Layout"): the shared utilities (errors, progress, atomic, machine),
data, tokenizer, model, infer, eval, train (it samples through infer and may be handed an
evaluation), recipes, serve, and on top the thin commands (`srlm.commands`, `srlm.cli`) and the
package's own facade (`srlm.load` / `srlm.save`). Every import counts, including the lazy ones
inside functions.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "srlm"
ORDER = [
    "errors",
    "progress",
    "atomic",
    "machine",
    "data",
    "tokenizer",
    "model",
    "infer",
    "eval",
    "train",
    "recipes",
    "serve",
    "commands",
    "cli",
    "srlm",
]
LEVEL = {room: i for i, room in enumerate(ORDER)}
for util in ("errors", "progress", "atomic", "machine"):
    LEVEL[util] = 0
#: what a module may take from the package root: its version and the error type
ROOT_NAMES = {"__version__", "SrlmError"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "srlm"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "srlm":
            if node.module == "srlm" and {a.name for a in node.names} <= ROOT_NAMES:
                continue
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "srlm":
                    yield node.lineno, alias.name


def test_every_room_is_known():
    rooms = {_room(_module(p)) for p in SRC.rglob("*.py")}
    assert rooms <= set(LEVEL), f"rooms missing from the layering order: {rooms - set(LEVEL)}"


def test_rooms_import_only_rooms_below_them_and_nothing_imports_a_command():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        me = _module(path)
        for line, target in _imports(path):
            mine, theirs = _room(me), _room(target)
            if mine != theirs and LEVEL[theirs] > LEVEL[mine]:
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: {mine} imports {target} ({theirs} is above it)")
            if theirs in ("commands", "cli") and mine not in ("commands", "cli"):
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: library module {me} imports command {target}")
    assert not bad, "\n".join(bad)


def test_the_rule_bites():
    """A module that imported upward would be caught (the check is not vacuous)."""
    assert LEVEL["model"] > LEVEL["data"] and LEVEL["eval"] > LEVEL["infer"] and LEVEL["commands"] > LEVEL["serve"]
    assert _room("srlm.train.loop") == "train" and _room("srlm.commands.eval") == "commands"
    imports = dict((t, n) for n, t in _imports(SRC / "recipes" / "runner.py"))
    assert any(_room(t) == "train" for t in imports)  # recipes -> train: allowed, and seen by the walker
