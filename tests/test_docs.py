"""The documentation site: its config reference is generated from mmjax/defaults.py and every
field there is described."""

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
