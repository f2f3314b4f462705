"""Shared fixtures: 8 fake CPU devices, the tiny embedded dataset and a tiny config."""

import os

# Must precede the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """The `tiny` build of mmjax_shapes (512 train / 128 test), generated once per session."""
    from input_pipeline import shapes

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    shapes.prepare(data_dir, "tiny")
    return data_dir


def make_tiny_config(tfds_dir: str):
    config = load_config("smoke")
    config.data.train = "tfds:mmjax_shapes/tiny:train"
    config.data.eval = "tfds:mmjax_shapes/tiny:test"
    config.data.tfds_data_dir = tfds_dir
    config.data.image_size = 16
    config.data.eval_batch_size = 64
    config.batch_size = 16
    config.total_steps = 8
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 4
    config.warmup_steps = 2
    config.model.embed_dim = 32
    config.model.image_tower.update(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2,
                                    patch_size=4)
    config.model.text_tower.update(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2)
    return config


@pytest.fixture
def tiny_config(tfds_dir):
    return make_tiny_config(tfds_dir)
