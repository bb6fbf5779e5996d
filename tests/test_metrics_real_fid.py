"""FID (EDM protocol), the float64 Fréchet distance, reference .npz files and the Inception feature loss.

A tiny random-weight TorchScript network with the call convention of inception-2015-12-05.pt stands in for
TF-Inception (uint8-valued NCHW images at any resolution, resized inside, `return_features=True` -> (B, 2048)).
"""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.metrics import frechet
from bench.metrics.features import (
    InceptionFeatures,
    inception_feature_mse,
    inception_mse,
    latent_mse,
    load_detector,
    to_uint8,
)
from bench.metrics.fid import FID, write_reference
from bench.models.base import Cell, Model


class TinyInception(torch.nn.Module):
    """Same interface as NVIDIA's TorchScript Inception (resizes internally); 64 features instead of 2048."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 4 * 4, 64)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = x.to(torch.float32)
        x = torch.nn.functional.interpolate(x, size=(29, 29), mode="bilinear", align_corners=False)
        x = (x - 128.0) / 128.0
        x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        features = torch.relu(self.fc(x.flatten(1)))
        if return_features:
            return features
        return features[:, :10]


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nets") / "inception-2015-12-05.pt"
    torch.jit.script(TinyInception()).save(str(path))
    return path


class ImageModel(Model):
    name = "tiny-images"
    shape = (3, 16, 16)


def images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 2 - 1 + shift).clamp(-1, 1)


def random_covariance(d, rank, seed):
    a = np.random.default_rng(seed).standard_normal((d, rank))
    return a @ a.T / rank


def fd_sqrtm(mu1, s1, mu2, s2):
    """Independent reference: EDM's formula with scipy.linalg.sqrtm of the non-symmetric product."""
    root = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * np.real(root)))


# --- the Fréchet distance -----------------------------------------------------------------------------------
def test_identical_statistics_give_zero():
    f = np.random.default_rng(0).standard_normal((500, 64))
    mu, sigma = frechet.feature_statistics(f)
    assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_isotropic_gaussians_closed_form():
    # FD(N(m1, a I), N(m2, b I)) = |m1 - m2|^2 + d (sqrt(a) - sqrt(b))^2
    d, a, b = 512, 2.0, 0.5
    mu1, mu2 = np.zeros(d), np.full(d, 0.1)
    fd = frechet.frechet_distance(mu1, a * np.eye(d), mu2, b * np.eye(d))
    assert fd == pytest.approx(d * 0.01 + d * (np.sqrt(a) - np.sqrt(b)) ** 2, rel=1e-10)


def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    mu1, mu2 = rng.standard_normal(50), rng.standard_normal(50)
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("rank", [200, 40])      # full rank and rank-deficient covariances
def test_matches_scipy_sqrtm(rank):
    d = 100
    s1, s2 = random_covariance(d, rank, 2), random_covariance(d, rank, 3)
    mu1, mu2 = np.random.default_rng(4).standard_normal((2, d))
    assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fd_sqrtm(mu1, s1, mu2, s2), rel=1e-6)


def test_cholesky_and_eigh_routes_agree():
    s1, s2 = random_covariance(80, 200, 7), random_covariance(80, 30, 8)
    a = frechet.trace_sqrt_product(s1, s2, method="cholesky")
    assert a == pytest.approx(frechet.trace_sqrt_product(s1, s2, method="eigh"), abs=1e-6)   # S2 singular
    singular = random_covariance(80, 30, 9)
    with pytest.raises(np.linalg.LinAlgError):
        frechet.trace_sqrt_product(singular, s2, method="cholesky")
    assert frechet.trace_sqrt_product(singular, s2) == pytest.approx(               # auto falls back to eigh
        frechet.trace_sqrt_product(singular, s2, method="eigh"), rel=1e-12)


def test_bad_statistics_are_refused():
    with pytest.raises(ValueError, match="dimension"):
        frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        frechet.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


def test_running_statistics_equal_np_cov():
    f = np.random.default_rng(5).standard_normal((300, 20)) * 3 + 7
    stats = frechet.RunningStatistics(20)
    for chunk in np.array_split(f, 7):
        stats.update(chunk)
    mu, sigma = stats.result()
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)


# --- reference statistics files --------------------------------------------------------------------------------
def test_reference_npz_round_trip(tmp_path):
    mu, sigma = np.arange(4.0), random_covariance(4, 8, 6)
    path = frechet.save_statistics(tmp_path / "ref.npz", mu, sigma)
    with np.load(path) as data:                      # EDM's layout: arrays named mu and sigma
        assert sorted(data.files) == ["mu", "sigma"]
    mu2, sigma2 = frechet.load_statistics(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)


def test_reference_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        frechet.load_statistics(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(2))
    with pytest.raises(ValueError, match="bad.npz.*'mu' and 'sigma'"):
        frechet.load_statistics(tmp_path / "bad.npz")


# --- the metric ---------------------------------------------------------------------------------------------
def test_fid_matches_independent_computation(inception_file, tmp_path):
    real, fake = images(64, 0), images(48, 1, shift=0.3)
    ref = write_reference(real, tmp_path / "ref.npz", inception=inception_file, batch_size=10)
    fid = FID(num_samples=48, batch_size=7, inception=inception_file, reference=ref)
    assert fid.label == "FID-48"
    value = fid.compute(Cell(model=ImageModel(), samples=fake))

    net = torch.jit.load(str(inception_file))
    with torch.no_grad():
        fr = net((real * 127.5 + 128).clip(0, 255).to(torch.uint8), return_features=True).double().numpy()
        ff = net((fake * 127.5 + 128).clip(0, 255).to(torch.uint8), return_features=True).double().numpy()
    expected = fd_sqrtm(ff.mean(0), np.cov(ff, rowvar=False), fr.mean(0), np.cov(fr, rowvar=False))
    assert value > 1e-3
    assert value == pytest.approx(expected, rel=1e-5)


def test_fid_of_the_reference_images_is_zero(inception_file, tmp_path):
    real = images(40, 2)
    ref = write_reference(real, tmp_path / "ref.npz", inception=inception_file)
    fid = FID(num_samples=None, inception=inception_file, reference=ref)
    assert fid.compute(Cell(model=ImageModel(), samples=real)) == pytest.approx(0.0, abs=1e-6)


def test_grayscale_images_are_repeated_to_rgb(inception_file):
    extractor = InceptionFeatures(inception_file)
    gray = images(3, 3)[:, :1]
    torch.testing.assert_close(extractor(gray), extractor(gray.repeat(1, 3, 1, 1)))


def test_fid_50k_refuses_a_small_cell(inception_file, tmp_path):
    fid = FID(inception=inception_file, reference=tmp_path / "ref.npz")
    assert fid.label == "FID-50k"
    with pytest.raises(ValueError, match="needs 50000 samples; the cell has 8"):
        fid.compute(Cell(model=ImageModel(), samples=images(8, 0)))


def test_registered_fid_metrics():
    import bench.metrics
    assert bench.metrics.get("fid").label == "FID-50k" and bench.metrics.get("fid").num_samples == 50_000
    assert bench.metrics.get("fid_30k").label == "FID-30k"
    assert not bench.metrics.get("fid").higher_is_better


def test_missing_files_are_named(tmp_path, inception_file):
    fid = FID(inception=tmp_path / "inception-2015-12-05.pt", reference=tmp_path / "cifar10-32x32.npz")
    missing = [r for r in fid.requirements(ImageModel()) if not r.present]
    assert [r.name for r in missing] == ["inception-2015-12-05.pt", "cifar10-32x32.npz"]
    assert "inception-2015-12-05.pt" in missing[0].missing_message()
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        fid.extractor()
    fid = FID(num_samples=None, inception=inception_file, reference=tmp_path / "cifar10-32x32.npz")
    with pytest.raises(FileNotFoundError, match="cifar10-32x32.npz"):
        fid.compute(Cell(model=ImageModel(), samples=images(4, 0)))


def test_a_pickled_detector_is_refused_with_the_torchscript_alternative(tmp_path):
    """A pickle (plain, or EDM's persistent format that carries source) is never unpickled: one line naming the .pt."""
    flag = tmp_path / "ran"
    path = tmp_path / "inception-2015-12-05.pkl"
    for payload in (pickle.dumps(os.getcwd), pickle.dumps({"a": 1}),
                    pickle.dumps({"module_src": f"open({str(flag)!r}, 'w')", "class_name": "Detector"})):
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=r"not a TorchScript archive.*inception-2015-12-05\.pt"):
            load_detector(path)
    assert not flag.exists()
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises((ValueError, FileNotFoundError)):
        load_detector(path)


def test_unknown_model_has_no_reference(inception_file):
    fid = FID(inception=inception_file)
    pytest.importorskip("bench.weights")
    assert not fid.supports(ImageModel())


# --- the distillation distances ---------------------------------------------------------------------------------
def test_inception_feature_distance(inception_file):
    extractor = InceptionFeatures(inception_file)
    dist = inception_mse(extractor)
    teacher = images(4, 7)
    student = (teacher + 0.2 * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))).clamp(-1, 1)
    student.requires_grad_(True)
    d = dist(student, teacher)
    assert d.shape == (4,)
    with torch.no_grad():
        net = torch.jit.load(str(inception_file))
        fs = net(((student + 1) * 127.5).clamp(0, 255), return_features=True)
        ft = net(((teacher + 1) * 127.5).clamp(0, 255), return_features=True)
    torch.testing.assert_close(d.detach(), (fs - ft).pow(2).mean(1))
    d.mean().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    torch.testing.assert_close(dist(teacher, teacher), torch.zeros(4))


def test_configured_inception_distance_reads_the_weights_entry(inception_file, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSTEP_INCEPTION", str(tmp_path / "absent.pt"))
    x = images(2, 4)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        inception_feature_mse(x, x)
    monkeypatch.setenv("FEWSTEP_INCEPTION", str(inception_file))
    torch.testing.assert_close(inception_feature_mse(x, x.flip(0)),
                               inception_mse(InceptionFeatures(inception_file))(x, x.flip(0)))


def test_latent_mse_is_per_sample():
    a, b = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(latent_mse(a, b), ((a - b) ** 2).flatten(1).mean(1))


def test_uint8_conversion_follows_edm():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 64, 128, 255, 255, 255]


def test_fid_ref_recipes_read_the_papers_images(inception_file, tmp_path):
    """`bench fid-ref`: the flux recipe takes the seed-2024 subset of the caption file's images at native size
    (one image at a time); the sd recipe centre-crops to 512x512; both write the statistics FID reads."""
    from PIL import Image

    from bench import cli
    from bench.commands import fid_ref
    from bench.metrics.frechet import load_statistics
    from bench.models.conditions import coco_fid_subset_images
    folder = tmp_path / "val2014"
    folder.mkdir()
    g = np.random.default_rng(0)
    images, anns = [], []
    for i in range(6):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.fromarray(g.integers(0, 256, (20 + i, 30 - i, 3), dtype=np.uint8)).save(folder / name, quality=95)
        images.append({"id": i, "file_name": name})
        anns.append({"id": 10 + i, "image_id": i, "caption": f"caption {i}"})
    captions = tmp_path / "captions_val2014.json"
    captions.write_text(json.dumps({"images": images, "annotations": anns}))
    chosen = coco_fid_subset_images(captions, n=4)
    import random
    order = list(range(6))
    random.seed(2024)
    random.shuffle(order)                                       # the reference's own calls
    assert [name for name, _ in chosen] == [images[i]["file_name"] for i in order[:4]]
    out = tmp_path / "flux.npz"
    assert cli.main(["fid-ref", "--recipe", "flux", "--images", str(folder), "--captions", str(captions),
                     "--num", "4", "--out", str(out), "--inception", str(inception_file), "--device", "cpu"]) == 0
    net = torch.jit.load(str(inception_file))
    feats = []
    for name, _ in chosen:                                      # independent: PIL -> uint8 -> the network
        arr = np.asarray(Image.open(folder / name).convert("RGB"))
        feats.append(net(torch.from_numpy(arr).permute(2, 0, 1)[None].float(), return_features=True)[0].double())
    f = torch.stack(feats).detach().numpy()
    mu, sigma = load_statistics(out)
    np.testing.assert_allclose(mu, f.mean(0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), atol=1e-6)
    x = fid_ref.read_image(folder / images[5]["file_name"], "sd")
    assert x.shape == (1, 3, 512, 512) and x.min() >= -1 and x.max() <= 1
    assert cli.main(["fid-ref", "--recipe", "flux", "--images", str(folder), "--out", str(out)]) == 2
    assert cli.main(["fid-ref", "--recipe", "lsun", "--images", str(folder), "--out", str(out)]) == 2
