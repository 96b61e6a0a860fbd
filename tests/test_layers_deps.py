"""Dependencies run one way: ``data_prep`` uses ``tfpipe``, never the reverse.

Only the application layer of tfpipe (the demo, its data and the notebook helpers) drives the
``data_prep`` jobs. Every other module is parsed (not imported) and must not name ``data_prep`` in an
import statement or an ``import_module``/``__import__`` call.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_LAYER = {"tfpipe/demo.py", "tfpipe/demo_data.py", "tfpipe/notebook.py"}


def data_prep_imports(source: str) -> list[str]:
    """``line: module`` for each import of data_prep (or a module in it) in Python ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [f"{node.lineno}: {n}" for n in names if n == "data_prep" or n.startswith("data_prep.")]
    return found


def test_the_checker_sees_every_form_of_import() -> None:
    source = "\n".join(
        [
            "import data_prep",
            "import numpy, data_prep.stats as s",
            "from data_prep.encode import encode_shard",
            "from data_prep import synth",
            "importlib.import_module('data_prep.stats')",
            "import data_prepare, tfpipe.data.stats",  # other names are fine
            "from . import data_prep_like",
            "text = 'python -m data_prep.stats'",
        ]
    )
    assert data_prep_imports(source) == [
        "1: data_prep",
        "2: data_prep.stats",
        "3: data_prep.encode",
        "4: data_prep",
        "5: data_prep.stats",
    ]


def test_tfpipe_imports_data_prep_only_in_its_application_layer() -> None:
    modules = sorted((ROOT / "tfpipe").rglob("*.py"))
    assert len(modules) > 20
    offenders = {}
    for path in modules:
        name = path.relative_to(ROOT).as_posix()
        if name not in APP_LAYER:
            found = data_prep_imports(path.read_text(encoding="utf-8"))
            if found:
                offenders[name] = found
    assert not offenders, (
        f"tfpipe modules that import data_prep (move the shared code into tfpipe): {offenders}"
    )
