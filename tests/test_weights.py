"""Weights you can trust: every name gets its real weights or a clear error, online and offline.

The online path is tested offline: a loopback-only HTTP server serves checkpoints in the official
``.pth.tar`` layout; ``TORCH_HOME`` is a temporary folder, so nothing touches the real cache.
"""

import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from moga_analysis.models import ALIASES, CheckpointError, hub, moganet
from moga_analysis.models.loading import file_sha256, load_model, weights_provenance

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "moga_analysis" / "assets" / "images"
PAIRS = sorted(ALIASES.items(), key=lambda kv: kv[1])  # (alias, canonical) of the six variants
NAMES = [n for pair in PAIRS for n in pair]  # all twelve names
TINY = dict(embed_dims=(8, 8, 8, 8), depths=(1, 1, 1, 1), ffn_ratios=(2, 2, 2, 2))


# --------------------------------------------------------------------------- loopback server
class _Server:
    """Serves ``files[basename] = bytes`` on 127.0.0.1; ``mode[basename]`` = ``truncated`` (the
    body stops halfway through its Content-Length) or ``html`` (a login page instead)."""

    def __init__(self):
        self.files, self.mode, self.requests = {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                mode = server.mode.get(name)
                if mode == "html":
                    page = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", server.mode.get(name + ":ctype", "text/html"))
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """A private torch hub cache, no weights folder, no mirror."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    monkeypatch.setattr(hub, "_process_weights_dir", None)
    yield


def _cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _pth(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _url(name: str) -> str:
    return timm.models.get_pretrained_cfg(moganet.canonical_name(name)).url


def _assert_weights(model, sd):
    own = model.state_dict()
    assert set(own) == set(sd)
    assert all(torch.equal(own[k], v) for k, v in sd.items())


@pytest.fixture(scope="module")
def xtiny_sd():
    """A real MogaNet-XTiny state dict (seeded, not the official values)."""
    torch.manual_seed(1)
    sd = timm.create_model("moganet_xtiny").state_dict()
    for k, v in sd.items():  # BatchNorm statistics as after training (the ERF tool warns on initial ones)
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.normal_(0.0, 0.1)
    return sd


# --------------------------------------------------------------------------- aliases
@pytest.mark.parametrize("alias,canonical", PAIRS)
def test_alias_is_a_full_name_in_timms_registry(alias, canonical, monkeypatch):
    monkeypatch.setitem(moganet.ARCH_SETTINGS, canonical.split("_", 1)[1], TINY)  # quick to build
    assert timm.is_model_pretrained(alias)
    tags = lambda arch: sorted(n.split(".", 1)[1] for n in timm.list_pretrained(arch) if n.split(".")[0] == arch)
    assert tags(alias) == tags(canonical) and "in1k" in tags(alias)
    for tag in tags(canonical):
        a, c = timm.models.get_pretrained_cfg(f"{alias}.{tag}"), timm.models.get_pretrained_cfg(f"{canonical}.{tag}")
        assert (a.url, a.file, a.input_size, a.crop_pct) == (c.url, c.file, c.input_size, c.crop_pct)
    with torch.device("meta"):
        m = timm.create_model(f"{alias}.in1k")
    assert m.pretrained_cfg["architecture"] == canonical and m.pretrained_cfg["tag"] == "in1k"
    assert m.pretrained_cfg["url"].endswith(hub.weights_filename(_url(canonical)))


# --------------------------------------------------------------------------- every name, server then cache
@pytest.mark.parametrize("name", NAMES)
def test_every_name_downloads_its_own_file_then_reads_the_cache(name, server, monkeypatch):
    """Tiny stand-in architectures, one distinct checkpoint per variant: each name must load exactly
    its own variant's file, downloaded once; the other spelling then finds it in the cache."""
    for arch in ARCH_NAMES:
        monkeypatch.setitem(moganet.ARCH_SETTINGS, arch, TINY)
    served = {}
    for i, (alias, canonical) in enumerate(PAIRS):
        torch.manual_seed(100 + i)
        sd = {k: v + i for k, v in timm.create_model(canonical).state_dict().items()}
        served[canonical] = sd
        server.files[hub.weights_filename(_url(canonical))] = _pth({"state_dict": sd, "epoch": 300})
    monkeypatch.setenv(hub.MIRROR_ENV, server.url)
    canonical = moganet.canonical_name(name)
    filename = hub.weights_filename(_url(canonical))

    model = timm.create_model(name, pretrained=True)
    _assert_weights(model, served[canonical])
    assert server.requests == [filename]
    path = _cache() / filename
    prov = weights_provenance(model)
    assert prov == {"model": f"{canonical}.in1k", "requested": name, "kind": "url", "location": _url(canonical),
                    "file": str(path.resolve()), "sha256": file_sha256(path)}
    assert model.weights_source == _url(canonical)

    server.stop()
    monkeypatch.setenv(hub.MIRROR_ENV, _closed_port_url())
    other = canonical if name != canonical else next(a for a, c in PAIRS if c == canonical)
    again = load_model(other, device="cpu")
    _assert_weights(again, served[canonical])
    assert weights_provenance(again)["file"] == str(path.resolve()) and weights_provenance(again)["requested"] == other
    assert server.requests == [filename]  # the cache served the second load


ARCH_NAMES = ["xtiny", "tiny", "small", "base", "large", "xlarge"]


# --------------------------------------------------------------------------- the official layout
@pytest.mark.parametrize("layout", ["state_dict", "state_dict_ema"])
def test_official_pth_tar_through_a_patched_cfg_url(layout, server, monkeypatch, xtiny_sd):
    cfg = timm.models._registry._model_pretrained_cfgs["moganet_xtiny.in1k"]
    filename = hub.weights_filename(cfg.url)
    monkeypatch.setattr(cfg, "url", f"{server.url}/weights/{filename}")
    other = {k: v + 1 for k, v in xtiny_sd.items()}
    payload = {"state_dict": xtiny_sd, "state_dict_ema": other, "epoch": 300} if layout == "state_dict" else {
        "state_dict_ema": xtiny_sd, "meta": {"epoch": 300}}
    server.files[filename] = body = _pth(payload)

    model = timm.create_model("moganet_xt", pretrained=True)  # the alias
    _assert_weights(model, xtiny_sd)  # the plain weights when both are there, else the EMA ones
    prov = weights_provenance(model)
    assert prov["requested"] == "moganet_xt" and prov["model"] == "moganet_xtiny.in1k"
    assert prov["location"] == f"{server.url}/weights/{filename}"
    import hashlib

    assert prov["sha256"] == hashlib.sha256(body).hexdigest()
    assert (_cache() / (filename + ".sha256")).read_text().split()[0] == prov["sha256"]

    server.stop()  # from now on only the cache
    _assert_weights(load_model("moganet_xtiny", device="cpu"), xtiny_sd)
    feats = timm.create_model("moganet_xt", pretrained=True, features_only=True, out_indices=(1, 3)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.eval().forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        got = feats(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert weights_provenance(feats)["sha256"] == prov["sha256"]
    assert server.requests == [filename]


def test_cli_run_downloads_records_the_file_and_reruns_from_the_cache(server, monkeypatch, tmp_path, xtiny_sd):
    from moga_analysis import erf

    filename = hub.weights_filename(_url("moganet_xtiny"))
    server.files[filename] = body = _pth({"state_dict": xtiny_sd})
    monkeypatch.setenv(hub.MIRROR_ENV, server.url)
    argv = ["--model", "moganet_xt", "--images", str(PHOTOS), "--num-images", "1", "--image-size", "64",
            "--no-figures", "--no-progress", "-q"]
    assert erf.main(argv + ["--out", str(tmp_path / "a")]) == 0
    import hashlib

    sha = hashlib.sha256(body).hexdigest()
    record = json.loads((tmp_path / "a" / "run.json").read_text())["weights"]["moganet_xt"]
    assert record["sha256"] == sha and record["model"] == "moganet_xtiny.in1k" and record["kind"] == "url"
    assert record["file"] == str((_cache() / filename).resolve())
    server.stop()
    monkeypatch.setenv(hub.MIRROR_ENV, _closed_port_url())
    assert erf.main(argv + ["--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "run.json").read_text())["weights"]["moganet_xt"]["sha256"] == sha
    assert server.requests == [filename]


# --------------------------------------------------------------------------- bad downloads
@pytest.mark.parametrize("mode,ctype,message", [
    ("truncated", None, "cut short"),
    ("html", "text/html", "HTML"),
    ("html", "application/octet-stream", "HTML page"),
])
def test_bad_downloads_are_clear_errors_and_leave_nothing(mode, ctype, message, server, monkeypatch, xtiny_sd):
    filename = hub.weights_filename(_url("moganet_xtiny"))
    server.files[filename] = _pth({"state_dict": xtiny_sd})
    server.mode[filename] = mode
    if ctype:
        server.mode[filename + ":ctype"] = ctype
    monkeypatch.setenv(hub.MIRROR_ENV, server.url)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model("moganet_xt", device="cpu")
    assert _url("moganet_xtiny") in str(info.value) and "--checkpoint PATH" in str(info.value)
    assert not _cache().exists() or list(_cache().iterdir()) == []  # no file, no partial file
    # the next try (a good server) works
    server.mode.pop(filename)
    _assert_weights(load_model("moganet_xt", device="cpu"), xtiny_sd)


# --------------------------------------------------------------------------- offline
@pytest.mark.parametrize("name", NAMES)
def test_offline_and_uncached_is_a_clear_error_before_anything_is_built(name, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, _closed_port_url())

    def never(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(moganet.MogaNet, "__init__", never)
    with pytest.raises(CheckpointError) as info:
        load_model(name, device="cpu")
    msg = str(info.value)
    cache_path = _cache() / hub.weights_filename(_url(name))
    assert _url(name) in msg and str(cache_path) in msg and "--checkpoint PATH" in msg and "--weights-dir" in msg
    assert "\n" not in msg and name in msg
    with pytest.raises(CheckpointError, match="--checkpoint PATH"):
        timm.create_model(name, pretrained=True)


def test_cli_exits_2_with_one_error_line_and_computes_nothing(tmp_path):
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "th"), MOGA_WEIGHTS_MIRROR=_closed_port_url(),
               MOGA_ANALYSIS_REEXEC="0", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop(hub.WEIGHTS_DIR_ENV, None)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "moga_analysis.erf", "--model", "moganet_xt", "--images", str(PHOTOS),
         "--num-images", "1", "--image-size", "64", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert _url("moganet_xtiny") in lines[0] and "--checkpoint PATH" in lines[0]
    assert not any(p.name.startswith(("erf_", "area_ratio")) for p in out.glob("*")) if out.exists() else True


@pytest.mark.parametrize("name", ["moganet_xtiny_single_order", "moganet_xtiny_nofd.fmnist_64", "moganet_xtiny_noca",
                                  "test_vit4"])
def test_names_without_weights_say_how_to_pass_them(name):
    with pytest.raises(CheckpointError) as info:
        load_model(name, device="cpu")
    msg = str(info.value)
    assert "has no pretrained weights" in msg and "--checkpoint PATH" in msg and "--random-weights" in msg
    if name.startswith("moganet"):
        assert "train_fashion_mnist.py --variant" in msg
    random = load_model(name, pretrained=False, device="cpu")
    assert weights_provenance(random)["kind"] == "random" and random.weights_source is None
    assert weights_provenance(random)["sha256"] is None


def test_other_timm_models_follow_the_same_rule(tmp_path, monkeypatch):
    """A timm model with Hugging Face weights: offline and uncached is a clear error; from a
    weights folder (file named <arch>.<tag>.safetensors) it loads exactly that file."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as info:
        load_model("test_resnet", device="cpu")
    assert "timm/test_resnet.r160_in1k" in str(info.value) and "--checkpoint PATH" in str(info.value)
    torch.manual_seed(3)
    sd = {k: v.clone() for k, v in timm.create_model("test_resnet").state_dict().items()}
    folder = tmp_path / "weights"
    folder.mkdir()
    save_file(sd, str(folder / "test_resnet.r160_in1k.safetensors"))
    model = load_model("test_resnet", weights_dir=folder, device="cpu")
    _assert_weights(model, sd)
    prov = weights_provenance(model)
    assert prov["kind"] == "url" and prov["location"] == "hf-hub:timm/test_resnet.r160_in1k"
    assert prov["file"] == str((folder / "test_resnet.r160_in1k.safetensors").resolve())
    assert "state_dict" not in model.pretrained_cfg or model.pretrained_cfg["state_dict"] is None


def test_an_unreachable_hugging_face_hub_fails_at_once(tmp_path, monkeypatch):
    """Not cached and the hub endpoint refuses the one probe connection: a clear error without
    the hub's retries (about 25 s); a reachable endpoint or a proxy goes to the hub's download."""
    import huggingface_hub
    from huggingface_hub import constants

    calls = []
    torch.manual_seed(4)
    sd = {k: v.clone() for k, v in timm.create_model("test_resnet").state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))

    def fake_download(repo_id, filename, cache_dir=None):
        calls.append((repo_id, filename))
        return str(tmp_path / "model.safetensors")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    monkeypatch.setattr(constants, "ENDPOINT", _closed_port_url())
    with pytest.raises(CheckpointError, match="cannot be reached") as info:
        load_model("test_resnet", device="cpu")
    assert calls == [] and "--checkpoint PATH" in str(info.value)

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # the proxy reaches the hub, not this machine
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    _assert_weights(load_model("test_resnet", device="cpu"), sd)
    assert calls == [("timm/test_resnet.r160_in1k", "model.safetensors")]
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("HTTP_PROXY")

    with socket.socket() as listening:  # an endpoint that accepts connections
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        model = load_model("test_resnet", device="cpu")
    _assert_weights(model, sd)
    assert len(calls) == 2 and weights_provenance(model)["location"] == "hf-hub:timm/test_resnet.r160_in1k"


# --------------------------------------------------------------------------- the download tool and --weights-dir
def test_download_tool_and_weights_dir_round_trip(server, monkeypatch, tmp_path, capsys, xtiny_sd):
    from moga_analysis import erf
    from moga_analysis.weights.__main__ import main as weights_main

    filename = hub.weights_filename(_url("moganet_xtiny"))
    server.files[filename] = body = _pth({"state_dict": xtiny_sd})
    monkeypatch.setenv(hub.MIRROR_ENV, server.url)
    folder = tmp_path / "dl"
    assert weights_main(["download", "moganet_xt", "--weights-dir", str(folder), "--no-progress"]) == 0
    import hashlib

    sha = hashlib.sha256(body).hexdigest()
    printed = capsys.readouterr().out
    assert "moganet_xtiny.in1k" in printed and sha in printed and f"{len(body) / 2**20:.1f}" in printed
    assert sorted(p.name for p in folder.iterdir()) == [filename, filename + ".sha256"]
    assert (folder / filename).read_bytes() == body
    assert not _cache().exists()  # the tool wrote into --weights-dir only

    server.stop()  # the offline machine: no server, empty hub cache
    monkeypatch.setenv(hub.MIRROR_ENV, _closed_port_url())
    model = load_model("moganet_xtiny", weights_dir=folder, device="cpu")
    _assert_weights(model, xtiny_sd)
    assert weights_provenance(model)["file"] == str((folder / filename).resolve())
    assert weights_provenance(model)["sha256"] == sha
    monkeypatch.setenv(hub.WEIGHTS_DIR_ENV, str(folder))
    _assert_weights(load_model("moganet_xt", device="cpu"), xtiny_sd)
    monkeypatch.delenv(hub.WEIGHTS_DIR_ENV)
    with pytest.raises(CheckpointError):
        load_model("moganet_xt", device="cpu")  # without the folder: not found
    argv = ["--model", "moganet_xt", "--images", str(PHOTOS), "--num-images", "1", "--image-size", "64", "--no-figures",
            "--no-progress", "-q", "--out", str(tmp_path / "erf"), "--weights-dir", str(folder)]
    assert erf.main(argv) == 0
    assert json.loads((tmp_path / "erf" / "run.json").read_text())["weights"]["moganet_xt"]["sha256"] == sha

    assert weights_main(["list", "--weights-dir", str(folder), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["moganet_xtiny.in1k"]["cached"] == str(folder / filename)
    assert rows["moganet_xtiny.in1k"]["sha256"] == sha and rows["moganet_xtiny.in1k"]["alias"] == "moganet_xt.in1k"
    assert rows["moganet_small.in1k"]["cached"] is None and rows["moganet_small.in1k"]["url"] == _url("moganet_s")
    assert assert_all_six(rows)


def assert_all_six(rows) -> bool:
    return all(f"moganet_{v}.in1k" in rows for v in ARCH_NAMES)


def test_download_tool_defaults_to_the_six_variants():
    from moga_analysis.weights import official_weights, resolve_weights

    entries = official_weights()
    assert [e.name for e in entries] == [f"moganet_{v}.in1k" for v in ARCH_NAMES]
    assert [e.url for e in entries] == [_url(f"moganet_{v}") for v in ARCH_NAMES]
    assert [e.name for e in resolve_weights(["moganet_t.in1k_256", "moganet_s"])] == [
        "moganet_tiny.in1k_256", "moganet_small.in1k"]
    assert len(official_weights(all_tags=True)) == 8
    with pytest.raises(ValueError, match="no tag|no pretrained tag"):
        resolve_weights(["moganet_s.in22k"])


# --------------------------------------------------------------------------- provenance and hashes
def test_provenance_of_checkpoints_and_random_weights(tmp_path, xtiny_sd):
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": xtiny_sd}, path)
    model = load_model("moganet_xt", checkpoint=path, device="cpu")
    _assert_weights(model, xtiny_sd)
    import hashlib

    assert weights_provenance(model) == {
        "model": "moganet_xtiny.in1k", "requested": "moganet_xt", "kind": "file", "location": str(path),
        "file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    shipped = load_model("moganet_xt.fmnist_64", device="cpu")
    assert weights_provenance(shipped)["kind"] == "shipped" and weights_provenance(shipped)["sha256"]
    assert not Path(shipped.pretrained_cfg["file"] + ".sha256").exists()  # nothing written into the package


def test_file_sha256_is_computed_once_and_redone_when_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    true = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(f) == true
    side = tmp_path / "w.bin.sha256"
    sha, size, mtime = side.read_text().split()
    assert (sha, int(size), int(mtime)) == (true, f.stat().st_size, f.stat().st_mtime_ns)
    monkeypatch.setattr(hub, "_memory_hashes", {})
    side.write_text(f"{'0' * 64} {size} {mtime}\n")  # a cached value is trusted while size and mtime hold
    assert file_sha256(f) == "0" * 64
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # the file changed: hashed again
    assert file_sha256(f) == true and side.read_text().split()[0] == true
    # a folder that cannot be written: the hash is kept in memory
    monkeypatch.setattr(hub, "_sidecar", lambda p: tmp_path / "missing" / "dir" / "x.sha256")
    g = tmp_path / "g.bin"
    g.write_bytes(b"xyz")
    assert file_sha256(g) == hashlib.sha256(b"xyz").hexdigest()
    assert any(k[0] == str(g.resolve()) for k in hub._memory_hashes)
