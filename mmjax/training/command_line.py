"""The command line's own errors: a `--config.A.B=V` whose section A does not exist is named, with
the section it was probably meant to be, instead of ending in ml_collections' traceback.

Fields that do not exist inside an existing section are accepted by the flag parser and named
by the preflight (mmjax/preflight/field_checks.py), with everything else a config gets wrong.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys

from absl import app


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for main.py, ending the process with one line per bad override."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        sys.exit(explain_override_error(argv, e))


def explain_override_error(argv: list[str], error: Exception) -> str:
    """What a config override on `argv` got wrong, from the config file it overrides."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    overrides = [a[2:].split("=", 1)[0] for a in argv
                 if re.match(r"--(no)?config\.", a)]
    problems = []
    try:
        config = load_config_file(config_arg)
    except Exception as e:  # noqa: BLE001 - whatever the file raises, say so in one line
        return f"--config={config_arg}: cannot be loaded ({type(e).__name__}: {e})."
    for override in overrides:
        node, walked = config, "config"
        for part in override.removeprefix("no").split(".")[1:-1]:
            child = node.get(part) if hasattr(node, "get") else None
            if child is None:
                problems.append(f"--{override}: {walked}.{part}: no such section"
                                + _hint(node, walked, part))
                break
            node, walked = child, f"{walked}.{part}"
    if not problems:
        problems.append(f"a --config override could not be applied: {error}")
    return "The command line's config overrides:\n" + "\n".join(f"  - {p}" for p in problems)


def _hint(node, walked: str, part: str) -> str:
    if not hasattr(node, "keys"):
        return f" ({walked} is not a section)"
    close = difflib.get_close_matches(part, list(node.keys()), n=1)
    if close:
        return f"; did you mean {walked}.{close[0]}?"
    # A section of named entries (eval sets, losses): new entries are made in a config file.
    return (f"; {walked} has {sorted(node.keys())}" if len(node.keys())
            else f"; {walked} is empty in this config") + (
        f": add {walked}.{part} = dict(...) in the config file, then override its fields")


def load_config_file(spec: str):
    """The config `--config=PATH[:ARGUMENT]` names, as absl's config flag loads it."""
    path, _, argument = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("mmjax_command_line_config", path)
    if module_spec is None or module_spec.loader is None:
        raise FileNotFoundError(f"no Python file at {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(argument) if argument else module.get_config()
