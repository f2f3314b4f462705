"""The package (pyproject.toml) installs exactly the pinned set of requirements.txt."""

import os
import re

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_pins_what_requirements_txt_pins():
    required = set()
    for name in ("requirements.txt", "requirements-gpu-compile.txt"):  # README's second command
        with open(os.path.join(REPO_ROOT, name)) as f:
            required |= {line.split("#")[0].strip() for line in f} - {""}
    with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    test_extra = re.search(r"^test = \[(.*?)\]", pyproject, re.M).group(1)
    pinned = set(re.findall(r'"([^"]+)"', dependencies)) | set(re.findall(r'"([^"]+)"', test_extra))
    assert pinned == required
    jax_version = re.search(r'"jax==([^"]+)"', dependencies).group(1)
    for extra in ("gpu", "tpu"):  # accelerator builds of the very same JAX
        assert re.search(rf'^{extra} = \["jax\[\w+\]=={re.escape(jax_version)}"\]', pyproject, re.M)
    # The CUDA plugin for compiling without a GPU is that JAX's too.
    compile_only = re.search(r"^gpu-compile = \[(.*?)\]", pyproject, re.M).group(1)
    assert set(re.findall(r'"[\w-]+==([^"]+)"', compile_only)) == {jax_version}
