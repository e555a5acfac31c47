"""Model files (safetensors + JSON metadata) and the import of the authors' checkpoint."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from gvslcore.bundle import default_metadata, read_metadata, resolve_model, save_model
from gvslcore.cli import main
from gvslcore.errors import InputError
from gvslcore.nets import GVSLNet, UNet3D
from gvslcore.officialgvsl import import_official


def official_layout_state_dict(width: int = 32) -> dict[str, torch.Tensor]:
    """A state_dict with exactly the names and shapes of the authors' GVSL_epoch_1000.pth,
    built by hand from the paper's architecture (not from our module)."""
    sd: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(0)

    def double(prefix, cin, cout, k=3):
        for idx, (a, b) in ((0, (cin, cout)), (3, (cout, cout))):
            sd[f"{prefix}.double_conv.{idx}.weight"] = torch.randn(b, a, k, k, k, generator=g)
            sd[f"{prefix}.double_conv.{idx}.bias"] = torch.randn(b, generator=g)
        for idx in (1, 4):
            sd[f"{prefix}.double_conv.{idx}.weight"] = torch.randn(cout, generator=g)
            sd[f"{prefix}.double_conv.{idx}.bias"] = torch.randn(cout, generator=g)

    w = width
    ch = [w, 2 * w, 4 * w, 8 * w, 16 * w, 8 * w, 4 * w, 2 * w, w]
    double("unet.inc", 1, ch[0])
    for i in range(4):
        double(f"unet.down{i + 1}.maxpool_conv.1", ch[i], ch[i + 1])
    ups = [(ch[4] + ch[3], ch[5]), (ch[5] + ch[2], ch[6]), (ch[6] + ch[1], ch[7]), (ch[7] + ch[0], ch[8])]
    for i, (cin, cout) in enumerate(ups):
        double(f"unet.up{i + 1}.conv", cin, cout)
    double("f_conv", 2 * ch[4], 8 * w)
    double("sp_conv", 2 * w, w // 2)
    sd["res_conv.0.weight"] = torch.randn(w // 2, w, 3, 3, 3, generator=g)
    sd["res_conv.0.bias"] = torch.randn(w // 2, generator=g)
    sd["res_conv.1.weight"] = torch.randn(w // 2, generator=g)
    sd["res_conv.1.bias"] = torch.randn(w // 2, generator=g)
    sd["res_conv.3.weight"] = torch.randn(1, w // 2, 1, 1, 1, generator=g)
    sd["res_conv.3.bias"] = torch.randn(1, generator=g)
    sd["out_flow.weight"] = torch.randn(3, w // 2, 3, 3, 3, generator=g)
    sd["out_flow.bias"] = torch.randn(3, generator=g)
    for name, n in (("fc_rot", 3), ("fc_scl", 3), ("fc_trans", 3), ("fc_shear", 6)):
        sd[f"{name}.weight"] = torch.randn(n, 8 * w, generator=g)
        sd[f"{name}.bias"] = torch.randn(n, generator=g)
    return sd


def test_official_layout_matches_the_backbone_size():
    sd = official_layout_state_dict(32)
    backbone = sum(v.numel() for k, v in sd.items() if k.startswith("unet."))
    assert backbone == 23_538_144 == sum(p.numel() for p in UNet3D(1, 32).parameters())


def test_import_gvsl_round_trips_the_official_layout(tmp_path):
    sd = official_layout_state_dict(32)
    src = tmp_path / "GVSL_epoch_1000.pth"
    torch.save(sd, src)
    out = tmp_path / "gvsl.safetensors"
    assert main(["models", "import-gvsl", str(src), str(out)]) == 0
    state, meta = resolve_model(out)
    assert meta["task"] == "pretrain" and meta["architecture"]["width"] == 32
    # every official tensor bit-exact; our one extra layer (the affine head's pose moments) added fresh
    assert set(state) - set(sd) == {"f_moments.0.weight", "f_moments.0.bias"}
    assert set(sd) <= set(state)
    for k in sd:
        torch.testing.assert_close(state[k], sd[k].float(), rtol=0, atol=0)
    model = GVSLNet(32)
    model.load_state_dict(state, strict=True)


def test_import_rejects_wrong_shapes_and_pickled_objects(tmp_path, capsys):
    sd = official_layout_state_dict(8)
    sd["fc_rot.weight"] = torch.zeros(4, 64)
    torch.save(sd, tmp_path / "bad.pth")
    assert main(["models", "import-gvsl", str(tmp_path / "bad.pth"), str(tmp_path / "o.safetensors")]) == 2
    assert "fc_rot.weight has shape" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(InputError, match="weights-only"):
        import_official(tmp_path / "evil.pth", tmp_path / "o.safetensors")


def test_model_file_metadata_is_readable_without_torch_and_info_prints_it(tmp_path, capsys):
    meta = default_metadata("pretrain", 4)
    path = save_model(tmp_path / "m.safetensors", GVSLNet(4).state_dict(), meta)
    assert read_metadata(path) == meta
    assert main(["models", "info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"]["width"] == 4
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    assert main(["models", "info", str(tmp_path / "junk.safetensors")]) == 2
