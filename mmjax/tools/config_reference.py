"""The config reference page, generated from `mmjax/defaults.py`: every field, its default and
the comment above it. The docs site's `reference/config.md` is this tool's output, and a test
fails when the page is stale or a field has no description.

    python -m mmjax.tools.config_reference > docs/reference/config.md

A field is described by the comment lines directly above the statement that sets it. Statements
on consecutive lines share the comment above the first where it names them (`learning_rate`,
`warmup_steps` and `end_learning_rate_factor` under one comment); fields set inside one
statement (`ConfigDict(dict(...))`) share that statement's comment.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect

from absl import app

from mmjax import defaults

INTRO = """# Config reference

Every field of the base config (`mmjax/defaults.py`), which every config in `configs/` starts
from, with its default there and what it means. Set any of them on the command line:
`python main.py --config=configs/smoke.py --workdir=DIR --config.total_steps=100`.

This page is generated: `python -m mmjax.tools.config_reference > docs/reference/config.md`.
"""


@dataclasses.dataclass
class Statement:
    """One assignment in base_config(): the field it sets and the comment that describes it."""

    field: str
    description: str
    fields: list[str] = dataclasses.field(default_factory=list)  # the leaves it sets


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join(reversed(parts)) if isinstance(node, ast.Name) and parts else None


def statements(source: str | None = None) -> list[Statement]:
    """base_config()'s assignments in source order (or those of `source`, its text), each with
    its description."""
    source = inspect.getsource(defaults.base_config) if source is None else source
    lines = [line.strip() for line in source.splitlines()]
    function = ast.parse(source).body[0]
    found, previous_end, previous = [], None, None
    for node in function.body:
        if not isinstance(node, ast.Assign) or (name := _dotted(node.targets[0])) is None:
            previous_end, previous = node.end_lineno, None
            continue
        comment, row = [], node.lineno - 2
        while row >= 0 and lines[row].startswith("#"):
            comment.insert(0, lines[row].lstrip("# "))
            row -= 1
        description = " ".join(comment)
        field = name.split(".")[-1]
        if (not description and previous is not None and previous_end == node.lineno - 1
                and field in previous.description):
            description = previous.description  # a group: one comment naming each of its fields
        statement = Statement(name.removeprefix("config.").removeprefix("config"), description)
        found.append(statement)
        previous_end, previous = node.end_lineno, statement
    return found


def leaves(config, prefix: str = "") -> dict[str, object]:
    """{dotted field: default} of every field that is not a section (a non-empty ConfigDict)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items") and len(value):
            out.update(leaves(value, name + "."))
        else:
            out[name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def described(source: str | None = None) -> tuple[list[Statement], list[str]]:
    """(the statements with the leaves each sets, the leaves no comment describes); `source`:
    another text of base_config() to read the comments from."""
    found = statements(source)
    by_field = {s.field: s for s in found}
    undescribed = []
    for leaf in leaves(defaults.base_config()):
        owner, parts = None, leaf.split(".")
        for end in range(len(parts), 0, -1):  # the nearest statement that sets it or a parent
            owner = by_field.get(".".join(parts[:end]))
            if owner:
                break
        if owner is None or not owner.description:
            undescribed.append(leaf)
        if owner is not None:
            owner.fields.append(leaf)
    return found, undescribed


def _default(value) -> str:
    text = "None" if value is None else repr(value)
    return f"`{text}`".replace("|", "\\|")


def page() -> str:
    found, undescribed = described()
    if undescribed:
        raise ValueError(f"config fields without a description in mmjax/defaults.py: "
                         f"{', '.join(undescribed)}; write a comment line above each")
    base = leaves(defaults.base_config())
    sections: dict[str, list[Statement]] = {}
    for statement in found:
        if statement.fields:
            top = statement.field.split(".")[0]
            sections.setdefault(top if "." in statement.field else "run", []).append(statement)
    out = [INTRO]
    for section, rows in sections.items():
        out.append(f"## `config.{section}`" if section != "run" else "## The run")
        out.append("")
        out.append("| field | default | meaning |")
        out.append("| --- | --- | --- |")
        shown = None
        for statement in rows:
            description = statement.description.replace("|", "\\|")
            for leaf in statement.fields:
                meaning = description if description != shown else "(as above)"
                out.append(f"| `{leaf}` | {_default(base[leaf])} | {meaning} |")
                shown = description
        out.append("")
    return "\n".join(out)


def main(argv) -> None:
    del argv
    print(page(), end="")


if __name__ == "__main__":
    app.run(main)
