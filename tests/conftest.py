"""Shared fixtures: real photographs, real fitted splats, small datasets."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

# the bundled photographs (scikit-image, scikit-learn: dev dependencies)
from gsformat.testing.photos import PHOTOS, load_photo

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
os.environ.setdefault("TQDM_DISABLE", "1")


def load_script(path: str):
    """A script of the repository (``benchmarks/rd_bench.py``, ``examples/digits/run.py``) as a
    module, loaded from its file once: neither folder is a package, and nothing goes on
    sys.path."""
    name = "script_" + path.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def photo(name: str = "astronaut", size: int = 64) -> np.ndarray:
    """A bundled scikit-image photograph, centre-cropped and resized: uint8 [size, size, 3]."""
    return load_photo(name, size)


@pytest.fixture(scope="session")
def fitted_splats():
    """Real fitted splats (not random: compression is measured on these)."""
    from gsformat.fitting import fit_images
    images = np.stack([photo(n, 64) for n in ("astronaut", "coffee")])
    return fit_images(images, 256, 150, backend="numpy").splats


@pytest.fixture()
def small_dataset(tmp_path, fitted_splats):
    from gsformat.io.dataset_files import SplatWriter
    out = str(tmp_path / "ds")
    with SplatWriter(out, columns=["caption", "label"], codecs=[{"id": "gsformat.planar"}],
                     size_limit=1 << 14) as writer:
        for i in range(12):
            writer.write(f"img-{i:03d}", fitted_splats[i % 2], caption=f"photo {i}", label=i % 2)
    return out


def pytest_collection_modifyitems(config, items):
    from gsformat.fitting import cupy_available
    if cupy_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---- images on disk ------------------------------------------------------------------------
def write_image_folder(root, broken: bool = False, size: int = 40):
    """Photographs in two class folders, some captions; optionally broken files too."""
    import os
    from PIL import Image
    layout = {"people": ["astronaut"], "things": ["coffee", "rocket", "chelsea", "china"]}
    keys = []
    for cls, names in layout.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for name in names:
            Image.fromarray(load_photo(name, size)).save(os.path.join(root, cls, f"{name}.png"))
            keys.append(f"{cls}/{name}")
    with open(os.path.join(root, "people", "astronaut.txt"), "w") as f:
        f.write("an astronaut in a suit")
    if broken:
        good = open(os.path.join(root, "things", "coffee.png"), "rb").read()
        open(os.path.join(root, "things", "empty.jpg"), "wb").close()
        open(os.path.join(root, "things", "truncated.png"), "wb").write(good[:len(good) // 3])
        open(os.path.join(root, "things", "notimage.jpg"), "wb").write(b"hello, not a jpeg")
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(os.path.join(root, "things",
                                                                         "tiny.png"))
    return sorted(keys)


def write_tars(folder, n_tars: int = 2, per_tar: int = 3, missing_image: bool = False):
    """WebDataset shards: key.jpg + key.txt (+ key.cls); optionally a key with no image.
    Returns the dataset keys convert gives them: ``<tar name>/<key>`` with several tars."""
    import io
    import os
    import tarfile
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    keys, k = [], 0
    for t in range(n_tars):
        with tarfile.open(os.path.join(folder, f"{t:05d}.tar"), "w") as tar:
            def add(name, data):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for _ in range(per_tar):
                key = f"sample{k:04d}"
                buf = io.BytesIO()
                Image.fromarray(load_photo(PHOTOS[k % len(PHOTOS)], 32)).save(buf, "JPEG")
                add(f"{key}.jpg", buf.getvalue())
                add(f"{key}.txt", f"caption {k}".encode())
                add(f"{key}.cls", str(k % 3).encode())
                keys.append(f"{t:05d}/{key}" if n_tars > 1 else key)
                k += 1
            if missing_image and t == 0:
                add("orphan.txt", b"a caption without an image")
    return keys


# ---- a real S3 server (moto) ---------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port); yields the endpoint, stops it after."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable),
                                                      "moto_server")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    saved = {k: os.environ.get(k) for k in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server, request):
    import boto3
    name = "gs-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    return name
