"""SplatDataset on streaming: samples, collation, augmentations, resumption, ranks, workers."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gsformat import render_splats
from gsformat.io.dataset_files import SplatWriter
from gsformat.loaders import SplatAugment, SplatDataset, collate_splats, hflip, keep_strongest

N_SAMPLES = 24


@pytest.fixture()
def dataset_dir(tmp_path, fitted_splats):
    out = str(tmp_path / "ds")
    with SplatWriter(out, columns=["caption", "label"], codecs=[{"id": "gsformat.planar"}],
                     size_limit=1 << 14) as writer:
        for i in range(N_SAMPLES):
            writer.write(f"k{i:03d}", fitted_splats[i % 2], caption=f"c{i}", label=i % 2)
    return out


def make(dataset_dir, tmp_path, name="cache", **kwargs):
    kwargs.setdefault("shuffle", False)
    return SplatDataset(remote=dataset_dir, local=str(tmp_path / name), **kwargs)


def test_sample_fields(dataset_dir, tmp_path, fitted_splats):
    ds = make(dataset_dir, tmp_path, dtype=torch.float16)
    sample = ds[3]
    assert sample["key"] == "k003" and sample["caption"] == "c3" and sample["label"] == 1
    assert (sample["height"], sample["width"]) == (64, 64)
    assert sample["splats"].dtype == torch.float16
    assert torch.equal(sample["splats"], torch.from_numpy(fitted_splats[1].params))


def test_every_stored_column_reaches_the_sample(tmp_path, fitted_splats):
    """Issue 25 item 7: the ``meta`` column (img2dataset's sidecar) that `iter_dataset` returns
    was dropped; every stored column now comes through, by index and by either iterator."""
    from gsformat.io.dataset_files import iter_dataset
    out = str(tmp_path / "meta-ds")
    with SplatWriter(out, columns=["caption", "source", "meta"],
                     codecs=[{"id": "gsformat.planar"}]) as writer:
        for i in range(4):
            writer.write(f"k{i}", fitted_splats[i % 2], caption=f"c{i}", source=f"s/{i}.jpg",
                         meta=json.dumps({"url": f"http://x/{i}.jpg", "width": 640 + i}))
    stored = [{k: v for k, v in row.items() if k != "splats"}
              for row in iter_dataset(out, decode=False)]
    assert json.loads(stored[3]["meta"])["width"] == 643
    fields = ("key", "caption", "source", "meta")
    for fast in (True, False):
        samples = list(make(out, tmp_path, f"m{fast:d}", fast_iteration=fast, batch_size=2))
        assert [{k: s[k] for k in fields} for s in samples] == stored
    assert {k: make(out, tmp_path, "m2")[2][k] for k in fields} == stored[2]
    batch = collate_splats(samples[:2])
    assert batch["meta"] == [stored[0]["meta"], stored[1]["meta"]]


def test_epoch_keys_across_workers(tmp_path, monkeypatch):
    """The key table two workers share (`gsformat.loaders.keys`): a key the other worker
    published for another sample fails, naming both in index order; a sample repeated (an
    upsampled stream) is not a duplicate; the next epoch starts afresh; without room in
    /dev/shm, no table and a warning."""
    from gsformat import FormatError
    from gsformat.loaders import keys

    def where(i):
        return f"sample {i}"
    table = keys.SharedKeys.for_epoch(10, f"gsformat_test_{os.getpid()}",
                                      str(tmp_path / "keys.lock"))
    first, second = keys.EpochKeys(table, 0, where), keys.EpochKeys(table, 0, where)
    first.add("k", 7)
    first.add("k", 7)
    first.flush()
    second.add("k", 3)
    with pytest.raises(FormatError, match=r"^sample 7: key 'k' appears twice in this epoch: "
                                          r"also at sample 3 "):
        second.flush()
    again = keys.EpochKeys(table, 1, where)
    again.add("k", 3)
    again.flush()
    monkeypatch.setattr(keys.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(64 << 20, 63 << 20, 1 << 20))
    with pytest.warns(UserWarning, match="within each DataLoader worker only"):
        assert keys.SharedKeys.for_epoch(10 ** 6, "unused", str(tmp_path / "x.lock")) is None


def test_collate_pads_and_masks(dataset_dir, tmp_path):
    ds = make(dataset_dir, tmp_path, max_splats=100)
    batch = collate_splats([ds[0], ds[1]], pad_to=128)
    assert batch["splats"].shape == (2, 128, 8) and batch["mask"].sum() == 200
    assert batch["caption"] == ["c0", "c1"] and batch["label"].tolist() == [0, 1]
    assert (batch["splats"][~batch["mask"]][:, 5:] == 0).all()  # padding is colourless
    with pytest.raises(ValueError, match="more than pad_to"):
        collate_splats([ds[0]], pad_to=10)
    loader = DataLoader(make(dataset_dir, tmp_path, "c2", batch_size=4), batch_size=4,
                        collate_fn=collate_splats, pin_memory=torch.cuda.is_available())
    assert next(iter(loader))["splats"].shape[0] == 4


def test_max_splats_keeps_strongest():
    params = np.zeros((5, 8), np.float16)
    params[:, 2] = params[:, 4] = 0.1
    params[:, 5:8] = np.array([0.1, 0.9, -0.8, 0.01, 0.5])[:, None]
    kept = keep_strongest(params, 2)
    assert sorted(kept[:, 5].tolist()) == pytest.approx([-0.8, 0.9], abs=1e-3)


def test_hflip_is_exact(fitted_splats):
    params = torch.from_numpy(fitted_splats[0].params).float()
    flipped = torch.from_numpy(hflip(fitted_splats[0].params.astype(np.float32)))
    a = render_splats(params, height=64, width=64, clamp=False)
    b = render_splats(flipped, height=64, width=64, clamp=False)
    torch.testing.assert_close(b, a.flip(-1), atol=1e-5, rtol=1e-5)


def test_augmentations_reproducible(dataset_dir, tmp_path):
    aug = SplatAugment(hflip=0.5, position_jitter=0.002, colour_jitter=0.01, dropout=0.1)
    a = make(dataset_dir, tmp_path, "a", augment=aug)[5]["splats"]
    b = make(dataset_dir, tmp_path, "b", augment=aug)[5]["splats"]
    c = make(dataset_dir, tmp_path, "c", augment=aug, augment_seed=1)[5]["splats"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 200 < len(a) < 256  # ~10% dropped


def test_render_option_yields_pixels(dataset_dir, tmp_path, fitted_splats):
    sample = make(dataset_dir, tmp_path, render=(32, 48))[0]
    assert "splats" not in sample and sample["rendered"].shape == (3, 32, 48)
    expected = render_splats(fitted_splats[0], height=32, width=48)[0]
    torch.testing.assert_close(sample["rendered"], expected)


@pytest.fixture()
def image_dataset_dir(tmp_path, fitted_splats):
    """Four samples with a stored image column (as convert --keep-image writes it)."""
    import io

    from PIL import Image
    out = str(tmp_path / "image-ds")
    with SplatWriter(out, columns=["caption", "image"],
                     codecs=[{"id": "gsformat.planar"}]) as writer:
        for i in range(4):
            buffer = io.BytesIO()
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(buffer, format="JPEG")
            writer.write(f"k{i}", fitted_splats[i % 2], caption=f"c{i}", image=buffer.getvalue())
    return out


def documented_keys() -> dict:
    """The sample-key table of gsformat.loaders.dataset's docstring: key → its 'present' text."""
    import re

    from gsformat.loaders import dataset
    table = dataset.__doc__.split("=====\n", 3)[2].split("\n=====")[0]  # below the header
    rows, key = {}, None
    for line in table.splitlines():
        first = line[:20].strip()
        if first:
            key = first
            rows[key] = line[67:].strip()
        else:
            rows[key] += " " + line[67:].strip()
    return {name: present for cell, present in rows.items()
            for name in re.findall(r"``(\w+)``", cell)}


def test_sample_keys_are_the_documented_table(dataset_dir, image_dataset_dir, tmp_path):
    """Every key a sample has is in the table (or a stored column), with the type it says."""
    table = documented_keys()
    assert {"key", "height", "width", "splats", "rendered", "image", "caption", "label",
            "source", "meta"} <= set(table)
    assert table["key"] == table["height"] == "always" and "render=" in table["splats"]
    plain = make(dataset_dir, tmp_path, "k1")[0]
    assert set(plain) == {"key", "height", "width", "splats", "caption", "label"}
    stored = make(image_dataset_dir, tmp_path, "k2")[1]
    assert set(stored) == {"key", "height", "width", "splats", "image", "caption"}
    assert stored["image"].dtype == torch.float32 and stored["image"].shape == (3, 20, 30)
    assert 0.1 < float(stored["image"].mean()) < 0.2  # 40/255: the stored image, decoded
    assert "image" not in make(image_dataset_dir, tmp_path, "k3", load_image=False)[1]
    both = make(image_dataset_dir, tmp_path, "k4", render=(8, 8), load_image=True)[0]
    assert set(both) == {"key", "height", "width", "rendered", "image", "caption"}
    assert both["rendered"].shape == (3, 8, 8) and both["image"].shape == (3, 20, 30)
    batch = collate_splats([stored, make(image_dataset_dir, tmp_path, "k5")[2]])
    assert set(batch) == set(stored) | {"mask", "n_splats"}
    assert batch["image"].shape == (2, 3, 20, 30) and batch["caption"] == ["c1", "c2"]


def test_old_names_still_work_with_a_deprecation_warning(image_dataset_dir, dataset_dir,
                                                          tmp_path):
    """Renamed in 0.2: load_source_image= → load_image=, source_image → image, and a render
    sample's image → rendered; each old name still works until 0.3, warning."""
    with pytest.warns(DeprecationWarning, match="load_image"):
        ds = make(image_dataset_dir, tmp_path, "d1", load_source_image=False)
    assert "image" not in ds[0] and ds.load_image is False
    with pytest.raises(TypeError, match="not both"):
        make(image_dataset_dir, tmp_path, "d2", load_source_image=True, load_image=True)
    sample = make(image_dataset_dir, tmp_path, "d3")[0]
    with pytest.warns(DeprecationWarning, match="'source_image' is now 'image'"):
        assert sample["source_image"] is sample["image"]
    batch = collate_splats([sample])
    with pytest.warns(DeprecationWarning, match="'source_image' is now 'image'"):
        assert batch["source_image"] is batch["image"]
    rendered = make(dataset_dir, tmp_path, "d4", render=(8, 8))[0]
    with pytest.warns(DeprecationWarning, match="'image' is now 'rendered'"):
        assert rendered["image"] is rendered["rendered"]
    with pytest.raises(KeyError):  # no stored image and no render: no alias either
        make(dataset_dir, tmp_path, "d5")[0]["source_image"]
    # render= on a dataset with stored images: 'image' changed meaning, said at construction
    with pytest.warns(DeprecationWarning, match="'rendered'"):
        make(image_dataset_dir, tmp_path, "d6", render=(8, 8))


def test_resume_mid_epoch_no_repeats_no_losses(dataset_dir, tmp_path):
    from streaming import StreamingDataLoader
    first = make(dataset_dir, tmp_path, "r1", shuffle=True, shuffle_seed=3, batch_size=4)
    loader = StreamingDataLoader(first, batch_size=4, collate_fn=collate_splats)
    seen = []
    for step, batch in enumerate(loader):
        seen += batch["key"]
        if step == 2:
            state = loader.state_dict()
            break
    del loader, first
    second = make(dataset_dir, tmp_path, "r2", shuffle=True, shuffle_seed=3, batch_size=4)
    resumed = StreamingDataLoader(second, batch_size=4, collate_fn=collate_splats)
    resumed.load_state_dict(state)
    rest = [k for batch in resumed for k in batch["key"]]
    assert len(seen) == 12 and len(rest) == N_SAMPLES - 12
    assert sorted(seen + rest) == [f"k{i:03d}" for i in range(N_SAMPLES)]


RANK_SCRIPT = """
import json, sys
from gsformat.loaders import SplatDataset
ds = SplatDataset(remote=sys.argv[1], local=sys.argv[2], shuffle=True, batch_size=2)
print(json.dumps([s["key"] for s in ds]))
"""


def test_two_ranks_read_disjoint_halves(dataset_dir, tmp_path):
    """Two ranks as `torchrun --nproc_per_node 2` starts them (one node, gloo rendezvous)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, dataset_dir,
                                       str(tmp_path / "node-cache")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    keys = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        keys.append(json.loads(out.strip().splitlines()[-1]))
    assert len(keys[0]) == len(keys[1]) == N_SAMPLES // 2
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == [f"k{i:03d}" for i in range(N_SAMPLES)]


def test_multiple_workers(dataset_dir, tmp_path):
    ds = make(dataset_dir, tmp_path, "w", batch_size=4)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_splats)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == [f"k{i:03d}" for i in range(N_SAMPLES)]


@pytest.mark.parametrize("workers", [0, 2])
def test_fast_iteration_matches_streaming_order(dataset_dir, tmp_path, workers):
    """The shard-by-shard iterator yields streaming's samples in streaming's order, every epoch,
    and after a mid-epoch resumption."""
    from streaming import StreamingDataLoader

    def epochs(fast, name, state=None, n_epochs=2):
        ds = make(dataset_dir, tmp_path, f"{name}{int(fast)}", shuffle=True, shuffle_seed=5,
                  batch_size=4, fast_iteration=fast, num_canonical_nodes=2)
        loader = StreamingDataLoader(ds, batch_size=4, num_workers=workers,
                                     collate_fn=collate_splats)
        if state is not None:
            loader.load_state_dict(state)
        return [[k for batch in loader for k in batch["key"]] for _ in range(n_epochs)]

    fast, slow = epochs(True, "e"), epochs(False, "e")
    assert fast == slow and fast[0] != fast[1]
    assert sorted(fast[0]) == [f"k{i:03d}" for i in range(N_SAMPLES)]
    ds = make(dataset_dir, tmp_path, "st", shuffle=True, shuffle_seed=5, batch_size=4,
              num_canonical_nodes=2)
    loader = StreamingDataLoader(ds, batch_size=4, collate_fn=collate_splats)
    for step, _ in enumerate(loader):
        if step == 1:
            state = loader.state_dict()
            break
    resumed = epochs(True, "s", state, 1)[0]
    assert resumed == epochs(False, "s", state, 1)[0] == slow[0][8:]


def test_new_epoch_while_previous_unfinished(dataset_dir, tmp_path):
    """Abandoning an epoch part-way and starting the next must neither hang nor mix epochs."""
    ds = make(dataset_dir, tmp_path, "abandon", shuffle=True, batch_size=4)
    first = iter(ds)
    [next(first) for _ in range(5)]
    keys = [s["key"] for s in ds]
    assert sorted(keys) == [f"k{i:03d}" for i in range(N_SAMPLES)]
    assert list(first) == []  # the abandoned epoch stops rather than resuming


def test_corrupt_shard_is_named_not_silent(dataset_dir, tmp_path):
    name = sorted(n for n in os.listdir(dataset_dir) if n.endswith(".zstd"))[1]
    path = os.path.join(dataset_dir, name)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    ds = make(dataset_dir, tmp_path, "bad")
    with pytest.raises(Exception, match=name.replace(".", r"\.")):
        for i in range(len(ds)):
            ds[i]
    with pytest.raises(Exception, match=name.replace(".", r"\.")):  # while iterating, too
        list(make(dataset_dir, tmp_path, "bad-iter", batch_size=4))


def test_stream_from_s3_with_cache_limit(tmp_path, s3_bucket, s3_server, fitted_splats):
    url = f"s3://{s3_bucket}/ds"
    with SplatWriter(url, codecs=[{"id": "gsformat.planar"}], size_limit=1 << 13) as writer:
        for i in range(N_SAMPLES):
            writer.write(f"k{i:03d}", fitted_splats[i % 2])
    ds = SplatDataset(remote=url, local=str(tmp_path / "s3cache"), shuffle=False,
                      cache_limit="64kb", batch_size=4)
    keys = [s["key"] for s in ds]
    assert sorted(keys) == [f"k{i:03d}" for i in range(N_SAMPLES)]
    # shuffled: shards are evicted and fetched again mid-epoch
    shuffled = SplatDataset(remote=url, local=str(tmp_path / "s3cache2"), shuffle=True,
                            shuffle_block_size=N_SAMPLES, cache_limit="64kb", batch_size=4)
    assert sorted(s["key"] for s in shuffled) == sorted(keys)
    cached = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                 os.walk(tmp_path / "s3cache") for f in fs if ".mds" in f)
    assert cached <= 64 * 1024  # streaming evicted shards to stay within the limit


def test_example_train_loop_runs(dataset_dir):
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "train_loop.py")
    spec = importlib.util.spec_from_file_location("train_loop", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(data=dataset_dir, steps=2, batch_size=4, size=32)
