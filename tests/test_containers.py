"""WebDataset .tar shards and Parquet with image bytes read as the same images as a folder."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from ganaudit.errors import GanauditError
from ganaudit.review.content import train_image_hashes
from ganaudit.sources.datasets import open_image_set


def _folder_batches(images):
    return np.concatenate([b.numpy() for _, b in images.batches(50)])


def _write_tars(folder, out, per_shard=50):
    """WebDataset shards of the folder's images (key = running number) with .cls labels."""
    files = sorted(folder.rglob("*.png"))
    classes = sorted({f.parent.name for f in files})
    out.mkdir()
    for s in range(0, len(files), per_shard):
        with tarfile.open(out / f"shard-{s // per_shard:06d}.tar", "w") as tar:
            for i, f in enumerate(files[s : s + per_shard], start=s):
                for name, data in ((f"{i:06d}.png", f.read_bytes()),
                                   (f"{i:06d}.cls", str(classes.index(f.parent.name)).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return files, classes


def test_webdataset_shards_read_as_the_folder(tiny_sets, tmp_path):
    folder = open_image_set(tiny_sets["train"])
    files, _ = _write_tars(tiny_sets["train"], tmp_path / "wds")
    shards = open_image_set(tmp_path / "wds")
    assert len(shards) == len(folder) == 120 and shards.size == folder.size
    np.testing.assert_array_equal(_folder_batches(shards), _folder_batches(folder))
    np.testing.assert_array_equal(shards.labels, folder.labels)
    assert shards.describe(51) == {"path": "shard-000001.tar/000051.png"}
    assert shards.load(7).numpy().tolist() == folder.load(7).numpy().tolist()
    import hashlib
    assert train_image_hashes(shards, [3])[3] == hashlib.sha256(files[3].read_bytes()).hexdigest()
    single = open_image_set(tmp_path / "wds" / "shard-000000.tar")
    assert len(single) == 50 and single.fingerprint() != shards.fingerprint()


def test_parquet_image_bytes_read_as_the_folder(tiny_sets, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = open_image_set(tiny_sets["train"])
    files = sorted(tiny_sets["train"].rglob("*.png"))
    classes = sorted({f.parent.name for f in files})
    images = [{"bytes": f.read_bytes(), "path": f.name} for f in files]  # Hugging Face datasets' layout
    table = pa.table({"image": images, "label": [classes.index(f.parent.name) for f in files]})
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 70), tmp_path / "pq" / "part-0.parquet", row_group_size=25)
    pq.write_table(table.slice(70), tmp_path / "pq" / "part-1.parquet", row_group_size=25)
    parts = open_image_set(tmp_path / "pq")
    assert len(parts) == 120
    np.testing.assert_array_equal(_folder_batches(parts), _folder_batches(folder))
    np.testing.assert_array_equal(parts.labels, folder.labels)
    assert parts.describe(71) == {"path": "part-1.parquet[1]"}


def test_container_without_images_is_a_bad_input(tmp_path):
    with tarfile.open(tmp_path / "empty.tar", "w") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(GanauditError, match="no images found"):
        open_image_set(tmp_path / "empty.tar")
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(GanauditError, match="not a readable tar file"):
        open_image_set(tmp_path / "bad.tar")
