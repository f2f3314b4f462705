"""The preflight's check of field names: every field a config (or the command line) sets must be
one that something reads, so a misspelt `--config.learnin_rate=0.1` is named, with the field it
was probably meant to be, instead of being silently ignored.

The base config (mmjax/defaults.py) is the schema. Sections whose entries a run names itself
are open here and checked by what reads them: the losses and evaluators by their registries,
the eval sets by `eval_sets.FIELDS`, the model's fields by the model class it builds. The
tokenizer section may also hold what any tokenizer takes (an imported model's token ids).
"""

from __future__ import annotations

import difflib
import inspect

from mmjax import defaults, text_tokenizers
from mmjax.evaluation import eval_sets

# Sections that hold entries a run chooses by name, or a model's own keyword arguments.
OPEN_SECTIONS = ("losses", "eval_sets", "model")


def check_field_names(c) -> None:
    """Adds a problem for each field no part of mmjax reads, with the closest known name."""
    schema = defaults.plain(defaults.base_config())
    for tokenizer in text_tokenizers.TOKENIZERS.values():
        for name in inspect.signature(tokenizer).parameters:
            schema["tokenizer"].setdefault(name, None)
    _walk(c, c.config, schema, "config")
    for name, entry in (c.config.get("eval_sets") or {}).items():
        if not hasattr(entry, "keys"):
            c.add(f"config.eval_sets.{name}", "is not a set of fields",
                  "give a dict, e.g. dict(data='tfds:coco_captions:test')")
            continue
        for key in entry.keys():
            if key not in eval_sets.FIELDS:
                _unknown(c, f"config.eval_sets.{name}", key, eval_sets.FIELDS)


def _walk(c, node, schema, prefix: str) -> None:
    for key in node.keys():
        if key not in schema:
            _unknown(c, prefix, key, list(schema.keys()))
            continue
        known = schema[key]
        if (key not in OPEN_SECTIONS or prefix != "config") and isinstance(known, dict) and (
                hasattr(node[key], "keys")):
            _walk(c, node[key], known, f"{prefix}.{key}")


def _unknown(c, prefix: str, key: str, known) -> None:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    c.add(f"{prefix}.{key}", f"no such field{hint}",
          f"use a field of {prefix} (docs/reference/config.md lists them all)" if not close
          else f"set {prefix}.{close[0]} instead")
