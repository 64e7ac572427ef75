"""`act-operator update` from anywhere: the project's own git history holds the pristine renders.

Each test generates a project with one HOME, edits and commits it as a user would, then
updates it as a teammate would: in a clone, with a fresh HOME (no cache, no git identity)
and a newer template standing in for the next act-operator-lib release
(``ACT_OPERATOR_TEMPLATE_DIR``), through the real console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from act_operator_lib.templates import __file__ as templates_init

from tests.cli.conftest import ACT_OPERATOR, complete, count_tests, run, snapshot

PACKAGED_TEMPLATE = Path(templates_init).parent / "project"
TITLE = "# {{ project_name }}\n"
GROW_IT = "act-operator update                       # re-apply a newer act-operator-lib template"


def _env(home: Path, template: Path | None = None) -> dict[str, str]:
    """A user's environment: their own HOME and nothing act-operator or git kept elsewhere."""
    home.mkdir(parents=True, exist_ok=True)
    hidden = {"XDG_CACHE_HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_GLOBAL", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in hidden and "ACT_OPERATOR" not in k}
    env["HOME"] = str(home)
    if template is not None:
        env["ACT_OPERATOR_TEMPLATE_DIR"] = str(template)
    return env


def _act(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return complete(ACT_OPERATOR, *args, cwd=cwd, env=env)


def _git(project: Path, *args: str) -> str:
    return run("git", "-c", "user.name=me", "-c", "user.email=me@localhost", *args, cwd=project)


def _generate(tmp_path: Path) -> Path:
    """`act-operator new my-agent` on the first machine."""
    parent = tmp_path / "machine-a"
    parent.mkdir()
    result = _act("new", "my-agent", cwd=parent, env=_env(tmp_path / "home-a"))
    assert result.returncode == 0, result.stderr
    return parent / "my-agent"


def _edit_as_a_user(project: Path) -> None:
    """A new node wired into the graph (its test updated), a changed README title, committed."""
    result = _act("add", "node", "Summarise", cwd=project, env=_env(project.parent / "home"))
    assert result.returncode == 0, result.stderr
    graph = project / "src" / "my_agent" / "graph.py"
    graph.write_text(
        graph.read_text()
        .replace(
            "from my_agent.review import ReviewAnswer\n",
            "from my_agent.review import ReviewAnswer\nfrom my_agent.summarise import Summarise\n",
        )
        .replace(
            '    builder.add_edge(START, "DraftPrompt")\n',
            "    builder.add_node(Summarise())\n"
            '    builder.add_edge(START, "Summarise")\n'
            '    builder.add_edge("Summarise", "DraftPrompt")\n',
        )
    )
    graph_test = project / "tests" / "integration_tests" / "test_graph.py"
    graph_test.write_text(
        graph_test.read_text().replace(
            'updated_nodes == ["DraftPrompt", "StreamAnswer"]',
            'updated_nodes == ["Summarise", "DraftPrompt", "StreamAnswer"]',
        )
    )
    readme = project / "README.md"
    readme.write_text(readme.read_text().replace("# my-agent\n", "# my-agent: the support bot\n"))
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "Summarise questions first; name the bot")


def _release(tmp_path: Path, name: str, *, title: str | None = None) -> Path:
    """Stand in for a newer act-operator-lib: the packaged template with changes.

    A Makefile target, a changed docstring, a changed README line, a new file, and
    (with ``title``) a README title that collides with the user's.
    """
    template = tmp_path / name
    shutil.copytree(PACKAGED_TEMPLATE, template)
    files = template / "template"
    makefile = files / "Makefile.jinja"
    makefile.write_text(makefile.read_text() + "\ntypecheck:\n\tmypy src\n")
    nodes = files / "src" / "{{ package_name }}" / "nodes.py.jinja"
    assert "testable class nodes." in nodes.read_text()
    nodes.write_text(nodes.read_text().replace("testable class nodes.", "small class nodes."))
    readme = files / "README.md.jinja"
    text = readme.read_text()
    assert GROW_IT in text
    assert text.startswith(TITLE)
    text = text.replace(GROW_IT, GROW_IT.replace("re-apply", "merge in"))
    if title is not None:
        text = text.replace(TITLE, title, 1)
    readme.write_text(text)
    (files / "CONTRIBUTING.md.jinja").write_text("# Contributing to {{ project_name }}\n")
    return template


def _teammate_clone(project: Path, tmp_path: Path) -> Path:
    """The project as a teammate gets it: `git clone`, on a machine that never ran `new`."""
    machine = tmp_path / "machine-b"
    machine.mkdir()
    run("git", "clone", "-q", project, machine / "my-agent", cwd=machine)
    return machine / "my-agent"


def _machine_local_text(project: Path, *paths: Path) -> list[str]:
    """Files, or commits of the project's history, naming any of ``paths``."""
    everything = run("git", "log", "--all", "-p", "--format=%H %B", cwd=project)
    found = [f"history mentions {p}" for p in paths if str(p) in everything]
    for name, content in snapshot(project).items():
        if ".git" not in Path(name).parts:
            found += [f"{name} mentions {p}" for p in paths if str(p).encode() in content]
    return found


def test_update_in_a_fresh_clone_applies_the_template_and_keeps_user_edits(
    tmp_path: Path, project_python: Path
) -> None:
    original = _generate(tmp_path)
    _edit_as_a_user(original)
    clone = _teammate_clone(original, tmp_path)
    template = _release(tmp_path, "next-release")
    fresh_home = tmp_path / "home-b"

    result = _act("update", cwd=clone, env=_env(fresh_home, template))

    assert result.returncode == 0, result.stderr
    assert "Updated to the act-operator-lib" in result.stdout
    # The template's changes arrived ...
    assert "typecheck:\n\tmypy src" in (clone / "Makefile").read_text()
    assert "small class nodes." in (clone / "src" / "my_agent" / "nodes.py").read_text()
    assert (clone / "CONTRIBUTING.md").read_text() == "# Contributing to my-agent\n"
    readme = (clone / "README.md").read_text()
    assert "merge in a newer act-operator-lib template" in readme
    # ... and every edit of the user survived.
    assert readme.startswith("# my-agent: the support bot\n")
    graph = (clone / "src" / "my_agent" / "graph.py").read_text()
    assert 'builder.add_edge(START, "Summarise")' in graph
    assert (clone / "src" / "my_agent" / "summarise.py").is_file()
    # The merge is committed: a clean tree, and the pristine render is now in the history.
    assert run("git", "status", "--porcelain", cwd=clone) == ""
    parents = run("git", "rev-list", "--parents", "-1", "HEAD", cwd=clone).split()
    assert len(parents) == 3, "update commits a merge of the template's pristine render"
    # Nothing machine-local was written or committed, and nothing was cached in HOME.
    assert _machine_local_text(clone, tmp_path, fresh_home, Path.home()) == []
    assert list(fresh_home.iterdir()) == []
    # The project's own tests pass, the new node included.
    where = run(
        project_python, "-c", "import my_agent; print(my_agent.__file__)",
        cwd=clone, env={**os.environ, "PYTHONPATH": str(clone / "src")},
    )  # fmt: skip
    assert Path(where.strip()).is_relative_to(clone)
    output = run(
        project_python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        cwd=clone, env={**os.environ, "PYTHONPATH": str(clone / "src")},
    )  # fmt: skip
    assert f"{count_tests(clone)} passed" in output


def test_a_second_update_merges_only_what_changed_since_the_first(tmp_path: Path) -> None:
    project = _generate(tmp_path)
    _edit_as_a_user(project)
    home = tmp_path / "home-b"
    first = _release(tmp_path, "release-2")
    assert _act("update", cwd=project, env=_env(home, first)).returncode == 0
    # The user reverts one change the template made; a later release must not redo it.
    makefile = project / "Makefile"
    makefile.write_text(makefile.read_text().replace("\ntypecheck:\n\tmypy src\n", ""))
    _git(project, "commit", "-q", "-am", "no typecheck target")
    second = _release(tmp_path, "release-3")
    license_file = second / "template" / "LICENSE.jinja"
    license_file.write_text("MIT, {{ project_name }}\n")

    again = _act("update", cwd=project, env=_env(tmp_path / "home-c", first))
    result = _act("update", cwd=project, env=_env(tmp_path / "home-c", second))

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Nothing changed"), again.stdout
    assert result.returncode == 0, result.stderr
    assert (project / "LICENSE").read_text() == "MIT, my-agent\n"
    assert "typecheck:" not in makefile.read_text()
    assert (project / "README.md").read_text().startswith("# my-agent: the support bot\n")


def test_a_conflicting_edit_is_reported_by_name_and_nothing_is_lost(tmp_path: Path) -> None:
    project = _generate(tmp_path)
    _edit_as_a_user(project)
    user_readme = (project / "README.md").read_text()
    template = _release(tmp_path, "next-release", title="# {{ project_name }} (LangGraph)\n")

    result = _act("update", cwd=project, env=_env(tmp_path / "home-b", template))

    assert result.returncode == 1, result.stdout
    assert "README.md" in result.stderr
    assert "conflict" in result.stderr
    readme = (project / "README.md").read_text()
    assert "<<<<<<<" in readme
    assert ">>>>>>>" in readme
    assert "# my-agent: the support bot" in readme  # the user's line
    assert "# my-agent (LangGraph)" in readme  # the template's line
    assert "merge in a newer act-operator-lib template" in readme  # merged cleanly
    assert "typecheck:" in (project / "Makefile").read_text()  # other files merged
    unmerged = run("git", "diff", "--name-only", "--diff-filter=U", cwd=project).split()
    assert unmerged == ["README.md"]
    # Backing out gives the user's project back exactly.
    run("git", "merge", "--abort", cwd=project)
    assert (project / "README.md").read_text() == user_readme
    assert run("git", "status", "--porcelain", cwd=project) == ""


def test_update_refuses_a_dirty_work_tree(tmp_path: Path) -> None:
    project = _generate(tmp_path)
    (project / "README.md").write_text("work in progress\n")
    (project / "notes.txt").write_text("not added yet\n")
    template = _release(tmp_path, "next-release")
    before = snapshot(project)

    result = _act("update", cwd=project, env=_env(tmp_path / "home-b", template))

    assert result.returncode == 1
    assert "uncommitted changes" in result.stderr
    assert "README.md" in result.stderr
    assert "notes.txt" in result.stderr
    assert "commit or stash them" in result.stderr
    assert snapshot(project) == before


def test_update_in_a_shallow_clone_asks_for_the_history(tmp_path: Path) -> None:
    project = _generate(tmp_path)
    _edit_as_a_user(project)
    shallow = tmp_path / "ci" / "my-agent"
    shallow.parent.mkdir()
    run("git", "clone", "-q", "--depth", "1", f"file://{project}", shallow, cwd=shallow.parent)
    template = _release(tmp_path, "next-release")
    before = snapshot(shallow)

    result = _act("update", cwd=shallow, env=_env(tmp_path / "home-b", template))

    assert result.returncode == 1
    assert "git fetch --unshallow" in result.stderr
    assert snapshot(shallow) == before


def test_update_refuses_a_project_inside_another_repository(tmp_path: Path) -> None:
    monorepo = tmp_path / "monorepo"
    monorepo.mkdir()
    run("git", "init", "-q", cwd=monorepo)
    assert _act("new", "my-agent", cwd=monorepo, env=_env(tmp_path / "h")).returncode == 0
    before = snapshot(monorepo)

    result = _act("update", cwd=monorepo / "my-agent", env=_env(tmp_path / "h"))

    assert result.returncode == 1
    assert "inside the git repository" in result.stderr
    assert snapshot(monorepo) == before


def test_update_outside_a_generated_project(tmp_path: Path) -> None:
    result = _act("update", "--path", tmp_path, cwd=tmp_path, env=_env(tmp_path / "h"))

    assert result.returncode == 1
    assert "is not inside a project generated by `act-operator new`" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["h"]


def test_update_explains_a_project_generated_without_git(tmp_path: Path) -> None:
    env = _env(tmp_path / "h")
    assert _act("new", "plain", "--no-git", cwd=tmp_path, env=env).returncode == 0
    before = snapshot(tmp_path / "plain")

    result = _act("update", cwd=tmp_path / "plain", env=env)

    assert result.returncode == 1
    assert "generated without git (--no-git)" in result.stderr
    assert snapshot(tmp_path / "plain") == before


def test_generated_files_hold_no_machine_local_path(tmp_path: Path) -> None:
    project = _generate(tmp_path)

    answers = (project / ".copier-answers.yml").read_text()

    assert "_src_path" not in answers
    assert _machine_local_text(project, tmp_path, Path.home(), Path(sys.prefix)) == []


def test_a_project_generated_before_the_trailer_updates_and_loses_its_machine_path(
    tmp_path: Path,
) -> None:
    # act-operator-lib 0.1.0 committed the render as "Generate ... with act-operator new"
    # with no trailer, and its answers file named the generating machine's cache.
    project = _generate(tmp_path)
    answers = project / ".copier-answers.yml"
    old_path = "/home/someone/.cache/act-operator/project-template"
    answers.write_text(f"_commit: 0.1.0\n_src_path: {old_path}\n" + answers.read_text())
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "--amend", "-m", "Generate my-agent with act-operator new")
    _edit_as_a_user(project)
    template = _release(tmp_path, "next-release")

    result = _act("update", cwd=project, env=_env(tmp_path / "home-b", template))

    assert result.returncode == 0, result.stderr
    assert "_src_path" not in answers.read_text()
    assert "typecheck:" in (project / "Makefile").read_text()
    assert (project / "README.md").read_text().startswith("# my-agent: the support bot\n")


def test_a_rebased_render_is_not_taken_for_a_pristine_one(tmp_path: Path) -> None:
    # `git pull --rebase` flattens the update's merge: the render commit is replayed on the
    # user's work, keeping its trailer but no longer holding the pristine template.
    project = _generate(tmp_path)
    _edit_as_a_user(project)
    assert (
        _act("update", cwd=project, env=_env(tmp_path / "h", _release(tmp_path, "r2"))).returncode
        == 0
    )
    _git(project, "rebase", "-q", "HEAD^1")
    assert len(run("git", "rev-list", "--parents", "-1", "HEAD", cwd=project).split()) == 2
    third = _release(tmp_path, "r3")
    (third / "template" / "LICENSE.jinja").write_text("MIT, {{ project_name }}\n")

    result = _act("update", cwd=project, env=_env(tmp_path / "h", third))

    assert result.returncode == 0, result.stderr
    assert (project / "LICENSE").read_text() == "MIT, my-agent\n"
    assert (project / "src" / "my_agent" / "summarise.py").is_file()
    assert (
        'builder.add_edge(START, "Summarise")'
        in (project / "src" / "my_agent" / "graph.py").read_text()
    )
    assert (project / "README.md").read_text().startswith("# my-agent: the support bot\n")
