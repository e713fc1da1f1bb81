"""python -m eval.fid refuses images it would score wrongly, before the network loads; shows progress."""
import numpy as np
import pytest

from eval import fid


@pytest.fixture
def no_network(monkeypatch):
  def forbidden(*a, **k):
    raise AssertionError("the feature network was built before the inputs were checked")
  monkeypatch.setattr(fid, "_make_feature_fn", forbidden)


def _images(seed, n=40, size=4, channels=3):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_float_images_refused_unless_range_given_then_equal_to_uint8(tmp_path, monkeypatch):
  samples, ref = _images(1), _images(2)
  np.savez(tmp_path / "u8.npz", arr_0=samples)
  np.savez(tmp_path / "f01.npz", arr_0=samples.astype(np.float32) / 255.0)
  np.savez(tmp_path / "fpm1.npz", arr_0=samples.astype(np.float32) / 127.5 - 1.0)
  np.savez(tmp_path / "ref.npz", arr_0=ref)
  common = [f"--ref={tmp_path / 'ref.npz'}", "--features=pixels"]
  with monkeypatch.context() as m:
    m.setattr(fid, "_make_feature_fn", lambda a: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(SystemExit, match=r"--samples: float32 images.*--float_range=0,1"):
      fid.main([f"--samples={tmp_path / 'f01.npz'}"] + common)
  with pytest.raises(ValueError, match=r"values in \[-1, 1\] lie outside --float_range=0,1"):
    fid.main([f"--samples={tmp_path / 'fpm1.npz'}", "--float_range=0,1"] + common)
  want = fid.main([f"--samples={tmp_path / 'u8.npz'}"] + common)["fid"]
  for name, rng in (("f01.npz", "0,1"), ("fpm1.npz", "-1,1")):
    got = fid.main([f"--samples={tmp_path / name}", f"--float_range={rng}"] + common)["fid"]
    assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("shape,features,match", [
    ((8, 3, 16, 16), "pixels", r"look channels-first \(NCHW\); expected NHWC"),
    ((8, 16, 16, 1), "inception", r"Inception needs 3-channel RGB images, got 1"),
    ((8, 16, 16), "pixels", r"expected \[N, H, W, C\]"),
])
def test_wrong_layouts_refused_before_network(tmp_path, no_network, shape, features, match):
  np.savez(tmp_path / "s.npz", arr_0=np.zeros(shape, np.uint8))
  args = [f"--images={tmp_path / 's.npz'}", f"--write_stats={tmp_path / 'st.npz'}",
          f"--features={features}", "--random_inception_weights"]
  with pytest.raises(SystemExit, match=match):
    fid.main(args)
  assert not (tmp_path / "st.npz").exists()


def test_reference_dimension_checked_before_network(tmp_path, no_network):
  fid.save_stats(str(tmp_path / "ref.npz"), np.zeros(48), np.eye(48), 10, feature="pixels")
  np.savez(tmp_path / "s.npz", arr_0=_images(3, size=8))
  with pytest.raises(SystemExit, match=r"holds 48-d statistics but --samples give 192-d pixels"):
    fid.main([f"--samples={tmp_path / 's.npz'}", f"--ref={tmp_path / 'ref.npz'}",
              "--features=pixels"])


def test_progress_lines_with_eta(tmp_path, capsys):
  np.savez(tmp_path / "s.npz", arr_0=_images(4))
  fid.main([f"--images={tmp_path / 's.npz'}", f"--write_stats={tmp_path / 'st.npz'}",
            "--features=pixels", "--batch_size=16", "--progress_every_s=0"])
  lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[fid]")]
  assert [l.split(":")[1].split()[0] for l in lines] == ["16/40", "32/40", "40/40"]
  assert all("img/s, ETA " in l for l in lines) and lines[-1].endswith("ETA 0:00:00")
