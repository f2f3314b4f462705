"""The run compiled for TPU topologies that are not here (libtpu's compile-only path): names,
fit, FLOPs and collectives, on one slice and over two."""

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

from mmjax import models, preflight, sharding, text_tokenizers
from mmjax.tools import aot
from mmjax.training import host_memory


@pytest.mark.parametrize("name, libtpu", [("v5e-256", "v5e:16x16"), ("v5p-1024", "v5p:8x8x8"),
                                          ("v4-2048", "v4:8x8x16"), ("v6e-256", "v6e:16x16"),
                                          ("v5e:2x2", "v5e:2x2")])
def test_topology_names_as_users_meet_them(name, libtpu):
    assert aot.libtpu_topology(name)[1] == libtpu


def test_gpu_topology_names():
    assert aot.gpu_topology("8xh100") == ("h100", 1, 8)
    assert aot.gpu_topology("4x8xH200") == ("h200", 4, 8)
    assert aot.gpu_topology("v5e-8") is None
    with pytest.raises(ValueError, match="name them in the topology"):
        aot.topology_devices("8xh100", slices=2)


def test_an_unknown_topology_is_named_with_the_sizes_there_are():
    with pytest.raises(ValueError, match=r"no v5e pod of that size; sizes: v5e-1, v5e-4"):
        aot.libtpu_topology("v5e-12")
    with pytest.raises(ValueError, match="give a pod as Cloud TPU names it"):
        aot.libtpu_topology("tpu-256")


def test_a_tiny_run_on_one_and_on_two_slices_of_v5e_2x2(tiny_config):
    one = aot.compile_for(tiny_config, "v5e:2x2")
    assert one["devices"] == 4 and one["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert one["compiled"] and one["fits"] and 0 < one["bytes_per_device"] < 2**30
    assert one["flops_per_step_per_device"] > 0
    assert one["collectives"]["all-reduce"]["count"] > 0  # the gradients' mean
    assert not any(c["crossing_slices"] for c in one["collectives"].values())

    two = aot.compile_for(tiny_config, "v5e:2x2", slices=2)
    assert two["devices"] == 8 and two["mesh"]["data"] == 8 and two["fits"]
    # Data parallelism spans the slices: the gradients' mean crosses them.
    assert two["collectives"]["all-reduce"]["crossing_slices"] > 0
    assert two["collectives"]["all-reduce"]["bytes_crossing_slices"] > 0
    assert "across slices" in aot.format_report(two)


def test_collectives_are_counted_once_a_channel_with_every_tuple_element():
    """The TPU compiler copies a collective into each fused computation that overlaps it (the
    copies share its channel); a long tuple's elements carry /*index=N*/ comments."""
    hlo = "\n".join([
        "  %ag.1 = bf16[64,8]{1,0} all-gather(%p.1), channel_id=3, dimensions={0}",
        "  %ag.2 = bf16[64,8]{1,0} all-gather(%p.2), channel_id=3, dimensions={0}",
        "  %ar = (f32[4], f32[4], f32[4], f32[4], f32[4], /*index=5*/f32[4], f32[4]) "
        "all-reduce-start(%a, %b, %c, %d, %e, %f, %g), channel_id=7",
        "  %rs = f32[2,8]{1,0} reduce-scatter(%x), channel_id=9, dimensions={0}",
    ])
    found = aot.collectives(hlo)
    assert found["all-gather"]["count"] == 1 and found["all-gather"]["bytes"] == 64 * 8 * 2
    assert found["all-reduce"]["count"] == 1 and found["all-reduce"]["bytes"] == 7 * 4 * 4
    assert found["reduce-scatter"]["bytes"] == 2 * 8 * 4


def test_a_tiny_run_on_gpu_hosts_without_a_gpu(tiny_config):
    """XLA's GPU compiler, through the CUDA plugin, for two hosts of H100s described to it."""
    topology, hosts = "2x8xh100", 2
    report = aot.compile_for(tiny_config, topology)
    assert report["devices"] == 8 * hosts and report["mesh"]["data"] == 8 * hosts
    assert report["chip"] == "h100" and report["compiled"] and report["fits"]
    assert 79 * 2**30 < report["hbm_bytes_per_device"] < 80 * 2**30
    assert 0 < report["bytes_per_device"] < 2**30
    assert report["collectives"]["all-reduce"]["count"] > 0
    _, _, devices = aot.topology_devices(topology)
    assert len({d.process_index for d in devices}) == hosts


def test_fsdp_over_chips_of_several_hosts_of_one_slice(tiny_config):
    """A slice's chips are all joined by ICI: FSDP may span its hosts (v5e hosts hold 4)."""
    _, _, devices = aot.topology_devices("v5e:4x4")
    assert len({d.process_index for d in devices}) == 4
    mesh = sharding.create_mesh({"data": 1, "fsdp": 16, "tensor": 1}, devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 1}


def test_a_batch_too_large_for_the_chips_is_reported_not_crashed(tiny_config):
    tiny_config.batch_size = 2**20
    report = aot.compile_for(tiny_config, "v5e:2x2")
    assert not report["fits"] and not report["compiled"]
    assert report["bytes_per_device"] > 2**40 and report["over_by_bytes"] > 0  # terabytes a chip
    assert 15 * 2**30 < report["hbm_bytes_per_device"] <= 16 * 2**30
    assert any("sharding_rules=fsdp" in knob for knob in report["knobs"])
    # Micro-batches enough to bring the activations under the chip's memory.
    accumulate = next(int(k.split("=")[1].split()[0]) for k in report["knobs"]
                      if "grad_accum_steps" in k)
    assert accumulate * report["hbm_bytes_per_device"] >= report["bytes_per_device"]
    assert "DOES NOT FIT" in aot.format_report(report)


def test_the_target_topology_check_refuses_a_run_that_would_not_fit(tiny_config):
    tiny_config.target_topology = "v5e:2x2"
    assert aot.check_target(tiny_config)["fits"]
    tiny_config.batch_size = 2**20
    with pytest.raises(preflight.ConfigError, match=r"config\.target_topology = 'v5e:2x2': the run "
                       r"needs \d+\.\d+ GiB a chip there and a v5e chip holds 15\.\d+ GiB\. Fix: "
                       r"--config\.sharding_rules=fsdp"):
        aot.check_target(tiny_config)


# Millions of parameters of open_clip's models (its docs/model_profile.csv), which our configs
# build in open_clip's shapes; SigLIP So400m/14 is built in big_vision's (its MAP head and text
# head differ slightly from open_clip's port).
PUBLISHED = {"clip_b16": (149.62, 0.001), "clip_l14": (427.62, 0.001),
             "clip_h14": (986.11, 0.001), "clip_g14": (1366.68, 0.001),
             "siglip_so400m14": (877.36, 0.005)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_big_configs_have_the_published_parameter_counts(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    tokenizer = text_tokenizers.build_tokenizer(config.tokenizer)
    model = nnx.eval_shape(lambda: models.build_model(
        config.model, models.ModelInputs.from_data(config.data), tokenizer, seed=0))
    _, params = nnx.split(model, nnx.Param)
    millions = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) / 1e6
    published, tolerance = PUBLISHED[name]
    assert millions == pytest.approx(published, rel=tolerance), millions


def test_the_plugins_installed_for_compiling_leave_jax_on_the_cpu(monkeypatch):
    """libtpu and the CUDA plugin are here (for the compiles above) but no chip is: main.py
    sets JAX on the CPU before it starts, so neither plugin tries (and fails loudly) to load."""
    monkeypatch.delenv("JAX_PLATFORMS")
    assert host_memory.devices_will_be_cpus()
    monkeypatch.setattr(host_memory, "gpu_attached", lambda: True)
    assert not host_memory.devices_will_be_cpus()


def test_an_axis_that_splits_a_side_of_the_torus():
    """fsdp=8 on a 4x4 slice (sides of 4): each group of 8 is a run of neighbouring chips."""
    _, _, devices = aot.topology_devices("v5e:4x4")
    mesh = sharding.create_mesh({"data": -1, "fsdp": 8, "tensor": 1}, devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 8, "tensor": 1}
    assert len({d.id for d in mesh.devices.ravel()}) == 16
