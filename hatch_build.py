"""Editable installs of act-operator-lib: the two top-level folders imported in place.

The wheel maps ``cookbook/`` and ``templates/`` into ``act_operator_lib`` with hatchling's
``sources`` option (pyproject.toml). A path entry cannot rename a folder, so an editable
install (``pip install -e .``) gets this hook's small import finder instead: it answers
``act_operator_lib.cookbook`` and ``act_operator_lib.templates`` with the repository's
folders, so edits show up without reinstalling. Regular builds are left alone.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_MODULE = "_act_operator_lib_editable"
_FINDER = '''\
"""Editable act-operator-lib: act_operator_lib.cookbook/.templates live at the repository top."""

import importlib.util
import sys

_FOLDERS = {folders!r}


class _SubpackageFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        folder = _FOLDERS.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            name, folder + "/__init__.py", submodule_search_locations=[folder]
        )


if _SubpackageFinder not in sys.meta_path:
    sys.meta_path.append(_SubpackageFinder)
'''


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds the subpackage finder (and the .pth line that loads it) to editable wheels."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            return
        folders = {
            f"act_operator_lib.{name}": str(Path(self.root, name).resolve())
            for name in ("cookbook", "templates")
        }
        self._staging = Path(tempfile.mkdtemp(prefix="act-operator-editable-"))
        module = self._staging / f"{_MODULE}.py"
        module.write_text(_FINDER.format(folders=folders))
        pth = self._staging / f"{_MODULE}.pth"
        pth.write_text(f"import {_MODULE}\n")
        build_data["force_include_editable"][str(module)] = module.name
        build_data["force_include_editable"][str(pth)] = pth.name

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        staging = getattr(self, "_staging", None)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
