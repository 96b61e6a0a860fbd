"""Dependencies run one way: ``data_prep`` uses ``tfpipe``, never the reverse.

Only the application layer of tfpipe (the demo, its data and the notebook helpers) drives the
``data_prep`` jobs. Every other module is parsed (not imported) and must not name ``data_prep`` in an
import statement (lazy ones included) or an ``import_module``/``__import__`` call; an import under
``if TYPE_CHECKING:`` is for type checkers only and is allowed, as in the circle check.
"""

from __future__ import annotations

from pathlib import Path

from test_import_graph import imported_names, module_name

ROOT = Path(__file__).resolve().parents[1]
APP_LAYER = {"tfpipe/demo.py", "tfpipe/demo_data.py", "tfpipe/notebook.py"}


def data_prep_imports(source: str, module: str = "tfpipe.m", is_package: bool = False) -> list[str]:
    """The data_prep modules that ``module`` (whose text is ``source``) imports, sorted; the same walk
    of the syntax tree as the circle check of ``test_import_graph`` (relative, lazy and
    ``import_module`` imports count; ``TYPE_CHECKING`` imports do not)."""
    names = imported_names(source, module, is_package)
    return sorted(n for n in names if n == "data_prep" or n.startswith("data_prep."))


def test_the_checker_sees_every_form_of_import() -> None:
    source = "\n".join(
        [
            "import data_prep.download",
            "import numpy, data_prep.stats as s",
            "from data_prep.encode import encode_shard",
            "from data_prep import raw",
            "def f():",
            "    import data_prep",  # lazy imports count
            "importlib.import_module('data_prep.synth')",
            "if TYPE_CHECKING:",
            "    import data_prep.sharding",  # only for type checkers: not a run-time dependency
            "import data_prepare, tfpipe.data.stats",  # other names are fine
            "from . import data_prep_like",
            "text = 'python -m data_prep.grid'",
        ]
    )
    assert data_prep_imports(source) == [
        "data_prep",
        "data_prep.download",
        "data_prep.encode",
        "data_prep.encode.encode_shard",
        "data_prep.raw",
        "data_prep.stats",
        "data_prep.synth",
    ]


def test_tfpipe_imports_data_prep_only_in_its_application_layer() -> None:
    modules = sorted((ROOT / "tfpipe").rglob("*.py"))
    assert len(modules) > 20
    offenders = {}
    for path in modules:
        name = path.relative_to(ROOT).as_posix()
        if name not in APP_LAYER:
            source = path.read_text(encoding="utf-8")
            found = data_prep_imports(source, module_name(path, ROOT), path.name == "__init__.py")
            if found:
                offenders[name] = found
    assert not offenders, (
        f"tfpipe modules that import data_prep (move the shared code into tfpipe): {offenders}"
    )
