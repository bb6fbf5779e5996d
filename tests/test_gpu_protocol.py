"""What a GPU run of the paper grids depends on, checked on the CPU: the released SD grid on the network's own
range, metrics whose sample count differs from the cell's refused at load time, batches that do not pile up in
host memory, the reference precision of the big models and one big model held at a time, the prompt schemes of
the paper's code, and what `--dry-run` prints about each model."""
from __future__ import annotations

import json
import os
import sys
import types
import weakref

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_models_real_grids import registered  # noqa: E402,F401  (the metric stand-ins fixture)

import bench.metrics  # noqa: E402
from bench import cli, grid  # noqa: E402
from bench import run as runner  # noqa: E402
from bench.metrics.base import Metric  # noqa: E402
from bench.models import conditions  # noqa: E402


def test_released_sd_samples_on_the_networks_own_range(registered):  # noqa: F811
    """sample.py of the reference uses the network's sigma_min/sigma_max ([0.0292, 14.61] for SD v1.5), not the
    range stored with the coefficients (0.002, 80); x_T = 14.61 z starts the grid."""
    g = grid.load("paper_released")
    c = next(c for c in g.cells if c.model == "sd15" and c.nfe == 20)
    assert c.num_points == 11 and c.plan.sigmas[0] == pytest.approx(14.6146, abs=1e-4)
    assert c.plan.sigmas[-1] == pytest.approx(0.029168, abs=1e-6)
    model = g.models["sd15"]
    assert c.plan.sigmas[0] == pytest.approx(model.sigma_max, rel=1e-12)
    lsun = next(c for c in g.cells if c.model == "lsun_bedroom" and c.nfe == 5)
    assert lsun.plan.sigmas[0] == pytest.approx(g.models["lsun_bedroom"].sigma_max, rel=1e-12)


def test_a_metric_of_another_sample_count_is_refused_at_load_time(tmp_path, registered):  # noqa: F811
    p = tmp_path / "g.toml"
    p.write_text('name = "g"\nnfe = [8]\nnum_samples = 30000\n[[models]]\nname = "sd15"\nmetrics = ["fid"]\n'
                 '[[solvers]]\nname = "euler"\nlabel = "Euler"\n')
    with pytest.raises(ValueError, match=r"'fid' \(FID-50k\) scores exactly 50000 samples, but the cells of 'sd15' "
                                         r"draw 30000; name the metric of that size \(e.g. fid_30k\)"):
        grid.load(p)
    p.write_text(p.read_text().replace('"fid"', '"fid_30k"'))
    assert len(grid.load(p).cells) == 1
    assert cli.main(["run", "--grid", str(p.with_name("bad.toml")), "--dry-run"]) == 2      # missing file: 1 line


class BatchWatcher(Metric):
    """Records one number per sample and checks that no earlier batch's decoded samples are still alive."""

    name = "watch"
    alive_max = 0
    refs: list = []

    def per_sample(self, batch):
        BatchWatcher.refs.append(weakref.ref(batch.samples))
        BatchWatcher.alive_max = max(BatchWatcher.alive_max, sum(r() is not None for r in BatchWatcher.refs))
        return batch.samples.flatten(1)[:, :1].detach().cpu()

    def reduce(self, records, cell):
        return float(records.mean())


@pytest.mark.parametrize("num_samples", [64, 512])
def test_host_memory_holds_one_batch_of_samples_whatever_the_cell_size(tmp_path, monkeypatch, num_samples):
    mod = types.ModuleType("_batch_watcher")
    mod.BatchWatcher = BatchWatcher
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(bench.metrics.REGISTRY, "targets", dict(bench.metrics.REGISTRY.targets))
    bench.metrics.register("watch", "_batch_watcher:BatchWatcher")
    BatchWatcher.refs, BatchWatcher.alive_max = [], 0
    p = tmp_path / "g.toml"
    p.write_text(f'name = "g"\nnfe = [3]\nnum_samples = {num_samples}\nbatch_size = 16\n[[models]]\nname = "gmm64"\n'
                 'metrics = ["watch"]\n[[solvers]]\nname = "euler"\nlabel = "Euler"\n')
    assert runner.run(grid.load(p), tmp_path / "res", progress=False, out=lambda *_: None).computed == 1
    assert len(BatchWatcher.refs) == num_samples // 16
    assert BatchWatcher.alive_max == 1                 # the batch being scored, never an earlier one


def test_the_big_models_default_to_the_reference_precision():
    from bench.models import flux, latent
    sd, lsun, fx = latent.StableDiffusion(), latent.LSUNBedroomLDM(), flux.FluxModel()
    assert sd.autocast == "float16" and lsun.autocast == "float16"          # LDM/SD: fp16 autocast on CUDA
    assert sd.net_dtype == torch.float32 and fx.net_dtype == torch.bfloat16 and fx.dtype == torch.float32
    assert flux.FluxModel(torch_dtype="float32").net_dtype == torch.float32          # fp32 stays an option
    assert latent.StableDiffusion(autocast=None).autocast is None
    assert isinstance(sd.precision(), type(__import__("contextlib").nullcontext()))   # nothing on the CPU
    sd.device = "cuda"
    ctx = sd.precision()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.float16 and ctx.device == "cuda"


def test_one_set_of_weights_is_shared_and_released_for_every_holder():
    from bench.models import loaded

    class Holder:
        def __init__(self):
            self.net = None

        def drop_networks(self):
            self.net = None

    reads = []
    a, b = Holder(), Holder()
    for h in (a, b):
        h.net = loaded.get(("k",), lambda: reads.append(1) or {"net": torch.nn.Linear(2, 2)}, h)["net"]
    assert a.net is b.net and len(reads) == 1 and loaded.is_loaded(("k",))     # flux and flux_drawbench: one copy
    ref = weakref.ref(a.net)
    loaded.release(("k",))
    assert a.net is None and b.net is None and ref() is None and not loaded.is_loaded(("k",))


def test_the_paper_prompt_schemes(tmp_path):
    # SD: seed s takes row s of MS-COCO_val2014_30k_captions.csv
    csv = tmp_path / "coco30k.csv"
    csv.write_text("image_id,id,text\n" + "".join(f"{i},{i},caption {i}\n" for i in range(10)))
    rows = conditions.prompt_set("coco30k", csv)
    assert conditions.prompts_for_seeds(rows, [0, 3, 12], "index") == ["caption 0", "caption 3", "caption 2"]
    # FLUX: prompt i of the seed-2024 subset with generation seed 42 + i
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(30_005)]
    anns = [{"id": i, "image_id": i, "caption": f"c{i}"} for i in range(30_005)]
    js = tmp_path / "captions_val2014.json"
    js.write_text(json.dumps({"images": images, "annotations": anns}))
    subset = conditions.prompt_set("coco30k_seed2024", js)
    import random
    order = list(range(30_005))
    random.seed(2024)
    random.shuffle(order)
    assert len(subset) == 30_000 and subset[:3] == [f"c{i}" for i in order[:3]]
    assert conditions.prompts_for_seeds(subset, [42, 43], "index", seed_start=42) == subset[:2]
    from bench.models import flux, latent
    assert (flux.FluxModel().prompt_mode, flux.FluxModel().prompt_seed_start) == ("index", 42)
    assert flux.flux_drawbench().prompt_set == "drawbench_dyweight"
    assert (latent.StableDiffusion().prompt_set, latent.StableDiffusion().prompt_mode) == ("coco30k", "index")


def test_dry_run_prints_each_models_device_precision_and_memory(capsys, registered, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FEWSTEP_WEIGHTS", "/nonexistent")
    assert cli.main(["run", "--grid", "paper_flux", "--dry-run"]) == 1          # 1: files are missing
    out = capsys.readouterr().out
    assert "missing (model flux): missing FLUX.1-dev" in out
    assert "model flux: device cpu, bfloat16, 31.4 GiB of weights (batch 4 for teachers)" in out
    assert "skipped: flux_drawbench / DyWeight (released) / NFE 9" in out
    assert any(line.startswith("flux") and " iPNDM(2M) " in line and " flow " in line for line in out.splitlines())

    class Big:
        name, net_dtype, dtype, autocast, device, batch_hint = "big", torch.bfloat16, torch.float32, None, "cuda", 4

        def weights_bytes(self):
            return 90 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=80 * 2**30))
    assert runner.model_line(Big()).endswith("90.0 GiB of weights of 80 GiB on the device -- DOES NOT FIT "
                                             "(batch 4 for teachers)")


def test_metric_networks_run_on_the_cells_device(tmp_path, registered):  # noqa: F811
    """The runner builds every metric on its model's device, and FID's Inception computes there."""
    from bench import fakedevice
    p = tmp_path / "g.toml"
    p.write_text('name = "g"\nnfe = [8]\nnum_samples = 30000\n[[models]]\nname = "sd15"\n'
                 'options = { device = "meta" }\nmetrics = ["fid_30k", "clip_score"]\n'
                 '[[solvers]]\nname = "euler"\nlabel = "Euler"\n')
    g = grid.load(p)
    assert {m.device for m in runner.build_metrics(g, g.cells)["sd15"].values()} == {"meta"}
    from test_metrics_real_fid import TinyInception

    from bench.metrics.features import InceptionFeatures
    with fakedevice.active() as dev:              # (a TorchScript module cannot move to the emulated device)
        net = InceptionFeatures(net=TinyInception(), device=dev)
        images = torch.rand(4, 3, 16, 16) * 2 - 1                 # samples come back to the host ...
        features = torch.cat(list(net.batched(images, 3)))        # ... and are scored on the device
        assert net.device == dev and next(net.parameters()).device == dev and features.shape == (4, 64)
