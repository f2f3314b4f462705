"""The documentation site: its config reference is generated from mmjax/defaults.py and every
field there is described."""

import ast
import os

from mmjax import defaults
from mmjax.tools import config_reference

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_field_has_a_description():
    found, undescribed = config_reference.described()
    assert not undescribed, f"fields without a comment in mmjax/defaults.py: {undescribed}"
    # Every field of the base config is on the page, each with the comment above its statement.
    page = config_reference.page()
    for leaf in config_reference.leaves(defaults.base_config()):
        assert f"| `{leaf}` |" in page
    learning_rate = next(s for s in found if s.field == "learning_rate")
    assert learning_rate.description.startswith("Peak learning rate after warmup_steps")
    warmup = next(s for s in found if s.field == "warmup_steps")
    assert warmup.description == learning_rate.description  # one comment over a group


def test_the_config_reference_page_is_up_to_date():
    with open(os.path.join(REPO_ROOT, "docs", "reference", "config.md")) as f:
        committed = f.read()
    assert committed == config_reference.page(), (
        "docs/reference/config.md is stale: python -m mmjax.tools.config_reference > "
        "docs/reference/config.md")


def test_a_field_whose_comment_is_removed_is_named():
    import inspect

    source = inspect.getsource(defaults.base_config)
    comment = "    # Seeds the parameters and the data order"
    assert comment in source
    without = "\n".join(line for line in source.splitlines() if not line.startswith(comment))
    _, undescribed = config_reference.described(without)
    assert undescribed == ["seed"]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every `python ...` command in a code block of README, BENCHMARKS and the
    docs site (continued lines joined, comments and `cd`/`pip` steps left out)."""
    import glob
    import re
    import shlex

    pages = ["README.md", "BENCHMARKS.md", *glob.glob("docs/**/*.md", recursive=True)]
    commands = []
    for page in pages:
        with open(os.path.join(REPO_ROOT, page)) as f:
            text = f.read()
        for block in re.findall(r"```[\w-]*\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for part in line.split("&&"):
                    try:
                        argv = shlex.split(part, comments=True)
                    except ValueError:  # not shell (a Python or text block)
                        continue
                    if argv[:1] == ["python"] and argv[1:2] != ["-m"] or (
                            argv[:2] == ["python", "-m"] and argv[2] not in ("pytest", "venv")):
                        commands.append((page, argv))
    return commands


def defined_flags(program: tuple[str, ...]) -> set[str]:
    """The flags a program defines: every absl `DEFINE_*("name", ...)` (or argparse
    `add_argument("--name")`) call in its file and in
    the project's modules it imports, followed through the imports (read as source, not run:
    twenty programs importing JAX and TensorFlow took 100 CPU seconds). Booleans also as
    `noNAME`."""
    def module_file(name: str) -> str | None:
        base = os.path.join(REPO_ROOT, *name.split("."))
        return next((p for p in (base + ".py", os.path.join(base, "__init__.py"))
                     if os.path.exists(p)), None)

    first = module_file(program[1]) if program[0] == "-m" else os.path.join(REPO_ROOT,
                                                                            program[0])
    names, todo, seen = set(), [first], set()
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [module_file(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo.append(module_file(node.module))
                todo += [module_file(f"{node.module}.{a.name}") for a in node.names]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr.startswith("DEFINE") and node.args
                  and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
                if node.func.attr in ("DEFINE_bool", "DEFINE_boolean"):
                    names.add("no" + node.args[0].value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "add_argument" and node.args
                  and isinstance(node.args[0], ast.Constant)):  # an argparse script
                names.add(node.args[0].value.removeprefix("--"))
    return names


def test_every_documented_command_names_a_program_its_flags_and_config_fields():
    """Each command in the docs runs a program that exists, with flags it defines and config
    fields its config has: a renamed module, flag or field breaks this test, not a user."""
    from mmjax.preflight import field_checks
    from mmjax.training import command_line

    commands = documented_commands()
    assert len(commands) > 30
    programs = {tuple(argv[1:3]) if argv[1] == "-m" else (argv[1],) for _, argv in commands}
    flags = {program: defined_flags(program) for program in programs}
    missing = [p for p in programs if not flags[p]]
    assert not missing, f"documented programs that define no flags (or do not exist): {missing}"

    class Checks:
        def __init__(self, config):
            self.config, self.problems = config, []

        def add(self, field, message, fix):
            self.problems.append(f"{field}: {message}")

    wrong = []
    for page, argv in commands:
        program = tuple(argv[1:3]) if argv[1] == "-m" else (argv[1],)
        named = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--")]
        for name in named:
            if not name.startswith("config.") and name not in flags[program]:
                wrong.append(f"{page}: {' '.join(program)} has no flag --{name}")
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if not spec or not spec.startswith("configs/") or ":" in spec:
            continue  # a placeholder, or a config that reads a workdir
        config = command_line.load_config_file(os.path.join(REPO_ROOT, spec))
        for name in (n for n in named if n.startswith("config.")):
            node, parts = config, name.split(".")[1:]
            for part in parts[:-1]:
                node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                wrong.append(f"{page}: --{name}: {spec} has no section for it")
            elif parts[-1] not in node:
                with node.ignore_type():
                    node[parts[-1]] = 0
        checks = Checks(config)
        field_checks.check_field_names(checks)
        wrong += [f"{page}: {spec}: {p}" for p in checks.problems]
    assert not wrong, "\n".join(wrong)
