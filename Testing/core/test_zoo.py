"""Model catalog: Models.json, GVSL_HOME cache, download (good, corrupt, unreachable) from a local
HTTP server on 127.0.0.1, offline install, installed ids as MODEL arguments."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import torch

from gvslcore.bundle import default_metadata, save_model
from gvslcore.cli import main
from gvslcore.errors import InputError
from gvslcore.zoo import (
    REQUIRED_FIELDS,
    catalog_entry,
    load_catalog,
    locate_model,
    sha256_of,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GVSL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    meta = default_metadata("segmentation", 4)
    meta["architecture"]["num_classes"] = 2
    path = tmp_path_factory.mktemp("m") / "heart.safetensors"
    save_model(path, {"head.weight": torch.arange(8.0)}, meta)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_file):
    """A static HTTP server on 127.0.0.1 serving the good model and a corrupt copy."""
    root = tmp_path_factory.mktemp("www")
    (root / "good.safetensors").write_bytes(model_file.read_bytes())
    corrupt = bytearray(model_file.read_bytes())
    corrupt[-1] ^= 0xFF
    (root / "corrupt.safetensors").write_bytes(bytes(corrupt))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def catalog(tmp_path, monkeypatch, server, model_file) -> Path:
    good = catalog_entry(model_file, "heart-good", f"{server}/good.safetensors", title="good")
    corrupt = dict(good, id="heart-corrupt", url=f"{server}/corrupt.safetensors")
    missing = dict(good, id="heart-404", url=f"{server}/nothing.safetensors")
    offline = dict(good, id="heart-offline", url=f"http://127.0.0.1:{_unused_port()}/x.safetensors")
    path = tmp_path / "Models.json"
    path.write_text(json.dumps({"format": "gvsl-catalog", "models": [good, corrupt, missing, offline]}))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    monkeypatch.setenv("GVSL_CATALOG", str(path))
    return path


def test_the_shipped_catalog_is_valid(monkeypatch):
    monkeypatch.delenv("GVSL_CATALOG", raising=False)
    entries = load_catalog()
    assert entries, "Resources/Models.json lists no model"
    for e in entries:
        assert all(k in e for k in REQUIRED_FIELDS)
        assert e.get("download", "direct") in ("direct", "manual", "bundled")
        if e.get("download", "direct") == "direct":
            assert len(e["sha256"]) == 64 and e["url"].startswith("https://")
        if e.get("download") == "bundled":
            assert len(e["sha256"]) == 64 and (REPO / "Resources" / e["path"]).is_file()
    assert load_catalog(REPO / "Resources" / "Models.json") == entries


def test_download_good_file_then_use_it_by_id(home, catalog, capsys):
    assert main(["models", "download", "heart-good", "--progress", "none"]) == 0
    path = home / "models" / "heart-good.safetensors"
    assert path.is_file() and sha256_of(path) == json.loads(catalog.read_text())["models"][0]["sha256"]
    assert locate_model("heart-good") == path
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["heart-good"]["installed"] == str(path) and rows["heart-corrupt"]["installed"] is None


@pytest.mark.parametrize("model_id, words", [
    ("heart-corrupt", "corrupt"),
    ("heart-404", "HTTP 404"),
    ("heart-offline", "cannot reach"),
    ("no-such-model", "unknown model id"),
])
def test_failed_downloads_leave_nothing(home, catalog, capsys, model_id, words):
    assert main(["models", "download", model_id, "--timeout", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    folder = home / "models"
    assert not folder.exists() or not any(folder.iterdir())


def test_manual_entries_explain_what_to_do(home, monkeypatch, capsys):
    monkeypatch.delenv("GVSL_CATALOG", raising=False)
    assert main(["models", "download", "gvsl3d-unet-official"]) == 2
    err = capsys.readouterr().err
    assert "import-gvsl" in err and "install" in err


def test_offline_install_and_errors(home, catalog, model_file, tmp_path, capsys):
    assert main(["models", "install", str(model_file)]) == 0
    # The sha256 matches the catalog entry "heart-good": installed under that id.
    assert (home / "models" / "heart-good.safetensors").is_file()
    assert main(["models", "install", str(model_file), "--id", "mine"]) == 0
    assert locate_model("mine") == home / "models" / "mine.safetensors"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    capsys.readouterr()
    assert main(["models", "install", str(bad)]) == 2
    assert "not a safetensors model" in capsys.readouterr().err
    assert not (home / "models" / "bad.safetensors").exists()


def test_locate_model_messages(home, catalog):
    with pytest.raises(InputError, match="not installed"):
        locate_model("heart-good")
    with pytest.raises(InputError, match="does not exist"):
        locate_model("nothing-here")


def test_bad_catalogs(tmp_path, monkeypatch):
    path = tmp_path / "Models.json"
    monkeypatch.setenv("GVSL_CATALOG", str(path))
    with pytest.raises(InputError, match="not found"):
        load_catalog()
    path.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_catalog()
    path.write_text(json.dumps({"format": "gvsl-catalog", "models": [{"id": "x"}]}))
    with pytest.raises(InputError, match="lacks"):
        load_catalog()


@pytest.fixture
def bundled_catalog(tmp_path, monkeypatch, model_file) -> Path:
    """A catalog whose model ships beside it (download: bundled), as Resources/Models does."""
    folder = tmp_path / "Resources"
    (folder / "Models").mkdir(parents=True)
    shipped = folder / "Models" / "heart-default.safetensors"
    shipped.write_bytes(model_file.read_bytes())
    entry = {**catalog_entry(shipped, "heart-default", "bundled"), "download": "bundled",
             "path": "Models/heart-default.safetensors"}
    catalog = folder / "Models.json"
    catalog.write_text(json.dumps({"format": "gvsl-catalog", "format_version": 1, "models": [entry]}))
    monkeypatch.setenv("GVSL_CATALOG", str(catalog))
    return shipped


def test_a_bundled_model_is_found_by_id_with_nothing_installed(home, bundled_catalog):
    assert locate_model("heart-default") == bundled_catalog
    rows = {row["id"]: row for row in __import__("gvslcore.zoo", fromlist=["list_models"]).list_models()}
    assert rows["heart-default"]["installed"] == str(bundled_catalog)
    assert main(["models", "download", "heart-default"]) == 0  # a copy into the cache, checked
    assert (home / "models" / "heart-default.safetensors").read_bytes() == bundled_catalog.read_bytes()


def test_a_damaged_bundled_model_is_refused(home, bundled_catalog, capsys):
    import gvslcore.zoo as zoo

    zoo._VERIFIED.clear()
    data = bytearray(bundled_catalog.read_bytes())
    data[-1] ^= 0xFF
    bundled_catalog.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        locate_model("heart-default")


def test_the_shipped_catalog_bundles_the_default_heart_model():
    """Resources/Models.json lists gvsl-heart-ct as bundled, and the file matches its sha256."""
    from gvslcore.zoo import DEFAULT_SEGMENTATION_MODEL, bundled_path, find_entry

    entry = find_entry(DEFAULT_SEGMENTATION_MODEL, load_catalog(REPO / "Resources" / "Models.json"))
    path = bundled_path(entry, REPO / "Resources" / "Models.json")
    assert entry["download"] == "bundled" and path is not None and path.is_file()
    assert sha256_of(path) == entry["sha256"]
    assert path.stat().st_size <= 20 * 2**20
