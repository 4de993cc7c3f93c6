"""Datasets as users have them: folders of every image format and mode, arrays of every layout and
range, unreadable files skipped without shifting indices, and memory that does not grow with the set."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli
from ganaudit.errors import GanauditError
from ganaudit.sources.arrays import ArrayFile
from ganaudit.sources.datasets import open_image_set
from ganaudit.sources.samples import GeneratorSamples
from ganaudit.sources.generators import load_generator


def _rgb(seed: int, size=(8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _all(images, batch_size=4) -> tuple[np.ndarray, torch.Tensor]:
    parts = list(images.batches(batch_size))
    return np.concatenate([i for i, _ in parts]), torch.cat([b for _, b in parts])


# --- folders -------------------------------------------------------------------------------


def test_folder_of_every_extension_recursive_with_class_subfolders(tmp_path):
    arrays = {}
    for k, name in enumerate(["cats/a.png", "cats/deep/b.jpg", "cats/c.JPEG", "dogs/d.webp", "dogs/e.bmp", "dogs/f.PNG"]):
        arrays[name] = _rgb(k)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lossless = {"lossless": True} if name.endswith("webp") else {"quality": 100, "subsampling": 0}
        Image.fromarray(arrays[name]).save(path, **lossless)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    (tmp_path / "dogs" / "._f.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (tmp_path / ".cache").mkdir()
    Image.fromarray(_rgb(9)).save(tmp_path / ".cache" / "thumb.png")
    images = open_image_set(tmp_path)
    assert images.paths == sorted(arrays)
    assert images.class_names == ["cats", "dogs"] and images.labels.tolist() == [0, 0, 0, 1, 1, 1]
    _, batch = _all(images)
    for i, name in enumerate(images.paths):
        if name.endswith((".jpg", ".JPEG")):  # lossy: close, not equal
            assert (batch[i] * 255 - torch.from_numpy(arrays[name]).permute(2, 0, 1)).abs().mean() < 6
        else:
            assert torch.equal((batch[i] * 255).round().byte(), torch.from_numpy(arrays[name]).permute(2, 0, 1))


def test_flat_folder_and_a_single_class_folder_are_unlabelled(tmp_path):
    for folder in (tmp_path / "flat", tmp_path / "one" / "only"):
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_rgb(i)).save(folder / f"{i}.png")
    (tmp_path / "mixed" / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(0)).save(tmp_path / "mixed" / "top.png")
    Image.fromarray(_rgb(1)).save(tmp_path / "mixed" / "sub" / "inner.png")
    for name in ("flat", "one", "mixed"):
        images = open_image_set(tmp_path / name)
        assert images.labels is None and images.class_names == []


@pytest.mark.parametrize("mode, make, expected", [
    ("L", lambda: Image.new("L", (4, 4), 128), (128, 128, 128)),
    ("LA", lambda: Image.new("LA", (4, 4), (200, 0)), (200, 200, 200)),
    ("RGBA", lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped, not composited
    ("P", lambda: Image.new("RGB", (4, 4), (255, 0, 0)).convert("P"), (255, 0, 0)),
    ("P+transparency", lambda: _palette_with_transparency(), (0, 0, 255)),
    ("I;16", lambda: Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), (128, 128, 128)),
    ("1", lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
])
def test_image_modes_become_rgb(tmp_path, recwarn, mode, make, expected):
    make().save(tmp_path / "img.png")
    image = open_image_set(tmp_path).load(0)
    assert image.shape == (3, 4, 4) and image.dtype == torch.float32
    assert (image * 255).round().flatten(1)[:, 0].tolist() == list(expected)
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def _palette_with_transparency():
    im = Image.new("RGB", (4, 4), (0, 0, 255)).convert("P")
    im.info["transparency"] = 0
    return im


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=100)
    image = open_image_set(tmp_path).load(0) * 255
    assert image[0].mean() > 240 and image[1:].mean() < 15


def test_mixed_sizes_are_resized_to_the_first_with_antialiased_bicubic(tmp_path):
    first, big, wide = _rgb(0, (16, 16)), _rgb(1, (32, 32)), _rgb(2, (12, 24))
    for name, arr in (("a.png", first), ("b.png", big), ("c.png", wide)):
        Image.fromarray(arr).save(tmp_path / name)
    images = open_image_set(tmp_path)
    assert images.size == (16, 16)
    _, batch = _all(images)
    assert batch.shape == (3, 3, 16, 16)
    for i, arr in ((1, big), (2, wide)):
        reference = np.array(Image.fromarray(arr).resize((16, 16), Image.Resampling.BICUBIC))
        assert torch.equal((batch[i] * 255).round().byte(), torch.from_numpy(reference).permute(2, 0, 1))


# --- arrays --------------------------------------------------------------------------------

_UNIT = np.random.default_rng(0).random((6, 5, 7, 3)).astype(np.float32)  # (N, H, W, C) in [0, 1]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float01", "float-11", "float0255", "float16", ">f4"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_arrays_every_dtype_range_and_layout(tmp_path, dtype, layout):
    unit = np.round(_UNIT * 255) / 255  # values every dtype can hold exactly enough
    arr = {
        "uint8": lambda: np.round(unit * 255).astype(np.uint8),
        "uint16": lambda: np.round(unit * 65535).astype(np.uint16),
        "float01": lambda: unit.astype(np.float32),
        "float-11": lambda: (unit * 2 - 1).astype(np.float64),
        "float0255": lambda: (unit * 255).astype(np.float32),
        "float16": lambda: unit.astype(np.float16),
        ">f4": lambda: unit.astype(">f4"),
    }[dtype]()
    if layout == "NCHW":
        arr = arr.transpose(0, 3, 1, 2)
    np.save(tmp_path / "x.npy", arr)
    images = open_image_set(tmp_path / "x.npy")
    assert len(images) == 6 and images.size == (5, 7) and images.labels is None
    _, batch = _all(images)
    expected = torch.from_numpy(unit).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(batch, expected, atol=2e-3 if dtype == "float16" else 1e-5, rtol=0)


def test_grayscale_array_without_channel_axis(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, size=(4, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "g.npy", gray)
    _, batch = _all(open_image_set(tmp_path / "g.npy"))
    assert batch.shape == (4, 3, 6, 6)
    assert torch.equal(batch[:, 1], torch.from_numpy(gray).float() / 255)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("label_key", ["labels", "y", None])
def test_npz_with_optional_labels(tmp_path, compressed, label_key):
    images = np.random.default_rng(0).integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0, 1, 1, 2, 0, 2])
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "d.npz", images=images, **({label_key: labels} if label_key else {}))
    ds = open_image_set(tmp_path / "d.npz")
    assert (ds.labels is None) == (label_key is None)
    if label_key:
        assert ds.labels.tolist() == labels.tolist() and ds.class_names == ["0", "1", "2"]
    order = np.array([7, 2, 2, 9, 0])  # any order, repeats too
    _, batch = next(ds.batches(8, order))
    assert torch.equal(batch, torch.from_numpy(images[order]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(ds.load(4), batch[0].new_tensor(images[4]).permute(2, 0, 1) / 255)
    assert ds.describe(3) == {"path": "d.npz[3]"}


def test_array_rows_are_read_from_disk_not_loaded_whole(tmp_path):
    arr = np.arange(20 * 2 * 2 * 3, dtype=np.uint8).reshape(20, 2, 2, 3)
    np.savez(tmp_path / "s.npz", x=arr)
    rows = ArrayFile(tmp_path / "s.npz", "x.npy")
    assert rows._full is None  # reads at the member's offset in the zip
    assert np.array_equal(rows.rows([19, 3, 4, 5, 0]), arr[[19, 3, 4, 5, 0]])


def test_fortran_order_arrays_are_read_whole(tmp_path):
    arr = np.asfortranarray(np.random.default_rng(0).random((3, 4, 4, 3)).astype(np.float32))
    np.save(tmp_path / "f.npy", arr)
    _, batch = _all(open_image_set(tmp_path / "f.npy"))
    torch.testing.assert_close(batch, torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2))


# --- unreadable images: skipped, counted, and never shifting the index → path mapping ----------


@pytest.fixture()
def train_with_corrupt(tiny_sets, tmp_path):
    """The tiny training set with two unreadable files placed early in sorted order."""
    train = tmp_path / "train"
    shutil.copytree(tiny_sets["train"], train)
    (train / "class_0" / "0000a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    data = (train / "class_1" / "0003.png").read_bytes()
    (train / "class_1" / "0003a_truncated.png").write_bytes(data[: len(data) // 2])
    return train


def test_skip_corrupt_drops_files_and_keeps_indices_aligned(train_with_corrupt):
    with pytest.raises(GanauditError, match="0000a_broken.png.*--skip-corrupt"):
        _all(open_image_set(train_with_corrupt))
    images = open_image_set(train_with_corrupt, skip_corrupt=True)
    n_files, labels_before = len(images), images.labels.copy()
    bad = [images.paths.index("class_0/0000a_broken.png"), images.paths.index("class_1/0003a_truncated.png")]
    indices, batch = _all(images, batch_size=16)
    assert images.n_corrupt == 2 and images.skipped == ["class_0/0000a_broken.png", "class_1/0003a_truncated.png"]
    assert len(indices) == n_files - 2 == len(images)
    assert not any("broken" in p or "truncated" in p for p in images.paths)
    assert images.labels.tolist() == np.delete(labels_before, bad).tolist()
    # Row i of what was streamed is image i of the set from now on.
    for i in sorted({0, len(images) - 1, *bad, *(b - 1 for b in bad)}):
        assert torch.equal(batch[i], images.load(i)), images.describe(i)


def test_skip_corrupt_through_the_audit(train_with_corrupt, tiny_sets, tmp_path, capsys):
    """A copying generator's flags must name the training image that was copied, not a neighbour."""
    out = tmp_path / "r.json"
    code, _, err = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", train_with_corrupt,
                           "--holdout", tiny_sets["holdout"], "--skip-corrupt", "--num-samples", "60",
                           "--tta", "none", "--json", out, capsys=capsys)
    assert code == 1, err
    result = json.loads(out.read_text())
    assert result["train"]["n_corrupt"] == 2 and result["train"]["n_images"] == 120
    flagged = result["memorization"]["flagged"]
    assert len(flagged) > 30
    source = GeneratorSamples(load_generator(tiny_sets["copy_gen"], torch.device("cpu")), 60, seed=0)
    train = open_image_set(train_with_corrupt)
    for entry in flagged[:10]:
        copied = train.load(train.paths.index(entry["train_path"]))
        torch.testing.assert_close(source.load(entry["sample_index"]), copied, atol=1e-4, rtol=0)


def test_skipped_images_do_not_keep_the_index_cache_from_being_found(train_with_corrupt, tiny_sets, tmp_path,
                                                                     capsys):
    cache = tmp_path / "cache"
    for _ in range(2):
        code, _, err = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", train_with_corrupt,
                               "--holdout", tiny_sets["holdout"], "--skip-corrupt", "--num-samples", "60",
                               "--tta", "none", "--index", "hnsw", "--cache-dir", cache, "--json", tmp_path / "r.json",
                               capsys=capsys)
        assert code == 1, err
    assert len(list(cache.glob("indexes/hnsw-*.faiss"))) == 1
    assert json.loads((tmp_path / "r.json").read_text())["memorization"]["index"]["cached"]


# --- memory --------------------------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    torch.set_num_threads(1)
    from ganaudit.embedders import create_embedder
    from ganaudit.sources.datasets import open_image_set

    def status_mb(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

    embedder = create_embedder("pixels", torch.device("cpu"))
    embedder.embed(torch.rand(64, 3, 64, 64))  # warm up the kernels before measuring
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the resident size now
    before = status_mb("VmRSS:")
    images = open_image_set(sys.argv[1])
    checksum, seen = 0.0, 0
    for indices, batch in images.batches(64):
        checksum += float(embedder.embed(batch).sum())  # features are not kept: we measure streaming
        seen += len(indices)
    print(repr((before, status_mb("VmHWM:"), seen)))
''')


def _write_big_sets(root, n: int, size: int):
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, size=(n, size // 8, size // 8, 3), dtype=np.uint8)
    arr = low.repeat(8, axis=1).repeat(8, axis=2)  # blocky: quick to write and decode
    folder = root / "folder"
    for i in range(n):
        sub = folder / f"c{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr[i]).save(sub / f"{i:05d}.png", compress_level=1)
    np.savez_compressed(root / "set.npz", images=arr)
    return folder, root / "set.npz"


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_streaming_memory_does_not_grow_with_the_set(tmp_path):
    """Stream and embed 4000 images in a fresh process; peak RSS must grow by less than the budget.

    Method: the kernel's high-water mark of resident memory (``VmHWM``, what ``ru_maxrss``
    reports) sees every allocation (torch's allocator, numpy, PIL, decoding threads) and cannot
    miss a short spike between samples. Once the imports are done and the embedder has run,
    the mark is reset to the resident size (``/proc/self/clear_refs``); after opening and
    streaming one set (a folder of PNGs, or a compressed .npz) it must exceed that size by less
    than ``budget_mb`` (measured: about 28 MB for the folder, 18 MB for the array: two batches in
    flight, decoding threads, the file list), while the set is larger than the budget as uint8
    and 5x larger decoded to float32. glibc's malloc would otherwise keep freed batch buffers in
    its arenas (a one-off of about 20 MB that does not grow with the set), so the mmap threshold
    is fixed and freed buffers go back to the system: RSS then follows live memory. tracemalloc
    would miss torch's allocations, and RLIMIT_AS counts the virtual reservations torch makes
    whether used or not, so neither is reliable here. Keeping the batches, or np.load of the
    whole array, fails this test (190+ MB and 66 MB when it was written).
    """
    n, size, budget_mb = 4000, 64, 40
    decoded_mb = n * 3 * size * size * 4 / 2**20
    assert n * 3 * size * size / 2**20 > budget_mb and decoded_mb > 4 * budget_mb
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    runs = {location: subprocess.Popen([sys.executable, "-c", _MEMORY_SCRIPT, str(location)], cwd=REPO, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for location in _write_big_sets(tmp_path, n, size)}  # one fresh process per set, side by side
    for location, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        before, peak, seen = ast.literal_eval(stdout.strip().splitlines()[-1])
        assert seen == n
        assert peak - before < budget_mb, f"{location}: peak RSS grew {peak - before:.0f} MB (decoded set {decoded_mb:.0f} MB)"


# --- bad input: one line, exit code 2, nothing written --------------------------------------


def _bad_train(capsys, tiny_sets, tmp_path, train) -> str:
    out = tmp_path / "out" / "r.json"
    code, _, err = run_cli("check", "--generator", tiny_sets["fresh_gen"], "--train", train,
                           "--num-samples", "40", "--tta", "none", "--json", out, capsys=capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert not out.parent.exists()
    return lines[0]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda p: _npz(p / "d.npz", pictures=np.zeros((4, 8, 8, 3), np.uint8)),
     "no image array; expected one of the keys images, imgs, x, samples, arr_0, found pictures"),
    (lambda p: _npz(p / "d.npz", images=np.zeros((4, 64), np.uint8)), "expected images of shape"),
    (lambda p: _npz(p / "d.npz", images=np.zeros((4, 5, 8, 8), np.uint8)), "got (4, 5, 8, 8)"),
    (lambda p: _npz(p / "d.npz", images=np.zeros((2, 4, 8, 8, 3), np.uint8)), "expected images of shape"),
    (lambda p: _npz(p / "d.npz", images=np.zeros((0, 8, 8, 3), np.uint8)), "holds no images"),
    (lambda p: _npz(p / "d.npz", images=np.zeros((4, 8, 8, 3), np.int64)), "must be uint8, uint16 or float"),
    (lambda p: _npz(p / "d.npz", images=np.full((4, 8, 8, 3), np.nan, np.float32)), "NaN or Inf"),
    (lambda p: _npz(p / "d.npz", images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.zeros(3, int)),
     "labels must be 4 non-negative integers"),
    (lambda p: _npz(p / "d.npz", images=np.zeros((4, 8, 8, 3), np.uint8), labels=np.full(4, 0.5)),
     "labels must be 4 non-negative integers"),
    (lambda p: _npz(p / "d.npz", images=np.array([{"a": 1}] * 4, dtype=object)), "cannot read array file"),
    (lambda p: (p / "d.npz").write_bytes(b"PK\x03\x04 not a zip") and p / "d.npz", "cannot read array file"),
    (lambda p: (p / "d.npy").write_bytes(b"\x93NUMPY garbage") and p / "d.npy", "cannot read array file"),
    (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "got a .txt file"),
    (lambda p: Image.new("RGB", (8, 8)).save(p / "one.png") or p / "one.png", "got an image"),
    (lambda p: (p / "data").write_text("x") and p / "data", "got a plain file"),
])
def test_bad_training_inputs(tiny_sets, tmp_path, capsys, make, expected):
    src = tmp_path / "src"
    src.mkdir()
    msg = _bad_train(capsys, tiny_sets, tmp_path, make(src))
    assert expected in msg


def test_truncated_npy_is_an_error_when_read(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((50, 8, 8, 3), np.uint8))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[: len(data) - 500])
    images = open_image_set(tmp_path / "x.npy")
    with pytest.raises(GanauditError, match="truncated"):
        _all(images, batch_size=16)


def test_every_image_unreadable(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(GanauditError, match="none of its 3 images could be read"):
        open_image_set(tmp_path, skip_corrupt=True)
