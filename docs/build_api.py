"""Build the API reference (HTML, from the docstrings) with pdoc: ``python docs/build_api.py [OUT]``.

Documents :mod:`modulm` and the built-in plugins found through modulm's entry points, into
``build/api`` by default (ignored by git). Any pdoc warning (a name in ``__all__`` that does not
resolve, a module that fails to import, a broken docstring) fails the build, so CI catches it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings
from importlib import metadata
from pathlib import Path


# pdoc notices that modulm.assemble (the function, in modulm's __all__) names a module it adds
# anyway, and cannot evaluate the annotations of hypothesis' @composite strategies (it shows
# them as written). Everything else it warns about is a broken reference.
HARMLESS = ("The module specification 'modulm.assemble' adds a module", "Error parsing type annotation")


def main(argv: list[str]) -> int:
    import pdoc

    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "build" / "api"
    plugins = [ep.value for ep in metadata.distribution("modulm").entry_points if ep.group == "modulm"]
    packages = ["modulm", *sorted(plugins)]
    modules = []
    for name in packages:  # each package and its public submodules (not the CLI's, not __main__)
        package = importlib.import_module(name)
        modules.append(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            leaf = info.name.rsplit(".", 1)[-1]
            if not leaf.startswith("_") and not info.name.startswith("modulm.cli"):
                modules.append(info.name)
    for name in modules:  # lazily exported names become real attributes, which pdoc reads
        module = importlib.import_module(name)
        for attribute in getattr(module, "__all__", ()):
            getattr(module, attribute)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=out)
    problems = [str(w.message) for w in caught
                if not issubclass(w.category, DeprecationWarning) and not str(w.message).startswith(HARMLESS)]
    for problem in problems:
        print(f"build_api: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"API reference of {len(modules)} modules ({', '.join(packages)}) written to {out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
