"""Shared fixtures: 8 fake CPU devices, the tiny embedded dataset and a tiny config."""

import os

# Must precede the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """The `tiny` build of mmjax_shapes (512 train / 128 test), generated once per session."""
    from input_pipeline import shapes

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    shapes.prepare(data_dir, "tiny")
    return data_dir


def make_tiny_config(tfds_dir: str):
    import tiny_config

    config = tiny_config.get_config()
    config.data.tfds_data_dir = tfds_dir
    return config


@pytest.fixture
def tiny_config(tfds_dir):
    return make_tiny_config(tfds_dir)
