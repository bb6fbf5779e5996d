"""`python -m bench download`: official URL -> configured path, sha256-verified, atomic; against a local server."""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from functools import partial

import pytest

from bench import cli, weights
from bench.weights import Entry, RemoteFile


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/srv; yields its base URL."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setattr(weights.REGISTRY, "targets", dict(weights.REGISTRY.targets))
    monkeypatch.setenv("FEWSTEP_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("FEWSTEP_CONFIG", str(tmp_path / "paths.toml"))
    return tmp_path / "weights"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if ".partial" in p.name] if folder.exists() else []


def test_downloads_and_verifies_a_file(server, registry, capsys):
    root, url = server
    data = b"network weights " * 1000
    (root / "net.pkl").write_bytes(data)
    weights.register(Entry("t-net", "net.pkl", "test net", "T_NET", (RemoteFile(url + "net.pkl", sha(data)),)))
    assert cli.main(["download", "t-net"]) == 0
    assert (registry / "net.pkl").read_bytes() == data and not leftovers(registry)
    assert cli.main(["download", "t-net"]) == 0 and "already present" in capsys.readouterr().out


def test_refuses_a_corrupt_file(server, registry, capsys):
    root, url = server
    (root / "net.pkl").write_bytes(b"tampered bytes")
    weights.register(Entry("t-net", "net.pkl", "test net", "T_NET",
                           (RemoteFile(url + "net.pkl", sha(b"the real bytes")),)))
    assert cli.main(["download", "t-net"]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and sha(b"tampered bytes") in err
    assert not (registry / "net.pkl").exists() and not leftovers(registry)


def test_directory_entry_is_all_or_nothing(server, registry, tmp_path):
    root, url = server
    (root / "model_index.json").write_bytes(b"{}")
    (root / "unet.bin").write_bytes(b"unet")
    files = (RemoteFile(url + "model_index.json", sha(b"{}"), "model_index.json"),
             RemoteFile(url + "unet.bin", sha(b"not unet"), "unet/unet.bin"))
    weights.register(Entry("t-dir", "model", "test folder", "T_DIR", files))
    assert cli.main(["download", "t-dir"]) == 2
    assert not (registry / "model").exists() and not leftovers(registry)
    files = files[:1] + (RemoteFile(url + "unet.bin", sha(b"unet"), "unet/unet.bin"),)
    weights.register(Entry("t-dir", "model", "test folder", "T_DIR", files))
    dest = tmp_path / "elsewhere" / "model"
    assert cli.main(["download", "t-dir", "--dest", str(dest)]) == 0
    assert (dest / "unet" / "unet.bin").read_bytes() == b"unet" and (dest / "model_index.json").exists()


def test_extracts_a_member_of_a_verified_archive(server, registry, monkeypatch):
    root, url = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("annotations/captions_val2014.json", '{"annotations": [{"caption": "a cat"}]}')
    (root / "ann.zip").write_bytes(buf.getvalue())
    weights.register(Entry("t-cap", "captions.json", "captions", "T_CAP",
                           (RemoteFile(url + "ann.zip", sha(buf.getvalue()),
                                       member="annotations/captions_val2014.json"),)))
    target = registry / "custom" / "caps.json"
    monkeypatch.setenv("T_CAP", str(target))                # the download goes where the benchmark looks
    assert cli.main(["download", "t-cap"]) == 0
    assert "a cat" in target.read_text()


def test_unverified_entries_warn_and_bad_names_fail(server, registry, capsys):
    root, url = server
    body = b"Prompts\na cat\n"
    (root / "p.csv").write_bytes(body)
    weights.register(Entry("t-csv", "p.csv", "prompts", "T_CSV", (RemoteFile(url + "p.csv"),)))
    assert cli.main(["download", "t-csv"]) == 0
    assert f"not verified (sha256 of what arrived: {sha(body)})" in capsys.readouterr().err
    assert cli.main(["download", "no-such-thing"]) == 2
    assert "unknown weights entry 'no-such-thing'; accepted: " in capsys.readouterr().err
    assert cli.main(["download", "fid-ref-ms_coco"]) == 2
    assert "cannot be downloaded automatically" in capsys.readouterr().err
    weights.register(Entry("t-404", "x.bin", "x", "T_404", (RemoteFile(url + "missing.bin", sha(b"")),)))
    assert cli.main(["download", "t-404"]) == 2
    assert "cannot download" in capsys.readouterr().err and not leftovers(registry)


def test_paths_resolve_env_then_config_then_root(tmp_path, registry, monkeypatch):
    e = weights.get("edm-cifar10")
    assert e.path == registry / "edm-cifar10-32x32-uncond-vp.pkl"
    (tmp_path / "paths.toml").write_text('[paths]\n"edm-cifar10" = "ckpt/c10.pkl"\n')
    assert e.path == tmp_path / "ckpt" / "c10.pkl"                 # relative to the config file
    monkeypatch.setenv("FEWSTEP_EDM_CIFAR10", str(tmp_path / "env.pkl"))
    assert e.path == tmp_path / "env.pkl"
    (tmp_path / "paths.toml").write_text("[paths\n")
    monkeypatch.delenv("FEWSTEP_EDM_CIFAR10")
    with pytest.raises(ValueError, match="cannot read the paths config"):
        _ = e.path
    (tmp_path / "paths.toml").write_text("")
    msg = weights.requirement("sd-v1.5").missing_message()
    assert "stable-diffusion-v1-5" in msg and "FEWSTEP_SD15" in msg and "download sd-v1.5" in msg
