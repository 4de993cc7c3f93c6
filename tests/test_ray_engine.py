"""``--engine ray`` on a local Ray cluster (127.0.0.1 only), against the local engine.

Fast tests share one in-process ``ray.init`` (session-scoped: starting Ray costs seconds);
the slow test starts a head and a second worker node as separate processes, kills the
worker in the middle of embedding, and checks the job finished with every shard once.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, REPO, run_cli, save_torchscript, write_image_folder
from ganaudit.errors import GanauditError

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray's usage report would leave the machine
# The in-process cluster is one node: Ray then takes the loopback address as the node's own
# (read when ray is imported; the separate-process cluster below runs without it).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray cluster on 127.0.0.1 with 2 CPUs for every fast test."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def test_without_ray_the_error_names_the_extra(monkeypatch, tiny_sets, tmp_path, capsys):
    from ganaudit.engines.ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(GanauditError, match=re.escape("pip install 'ganaudit[ray]'")):
        import_ray()
    code, _, err = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                           "--num-samples", "20", "--engine", "ray", "--json", tmp_path / "r.json", capsys=capsys)
    assert code == 2 and "pip install 'ganaudit[ray]'" in err and not (tmp_path / "r.json").exists()


def test_sharded_search_gives_the_flat_index_matches(ray_local):
    from ganaudit.engines.ray import ShardedIndex
    from ganaudit.search.index import FlatIndex

    rng = np.random.default_rng(0)
    for metric in ("l2", "ip"):
        database = rng.standard_normal((1000, 16)).astype(np.float32)
        if metric == "ip":
            database /= np.linalg.norm(database, axis=1, keepdims=True)
        queries = np.concatenate([database[:20] + 0.01, rng.standard_normal((30, 16)).astype(np.float32)])
        flat = FlatIndex(database, metric)
        sharded = ShardedIndex(ray_local, database, metric, workers=2, shard_rows=128)  # 8 shards, 2 actors
        try:
            assert sharded.n_shards == 8 and sharded.kind == "flat"
            for exclude in (None, np.arange(50)):
                d_flat, i_flat = flat.search(queries, 7, exclude=exclude)
                d_ray, i_ray = sharded.search(queries, 7, exclude=exclude)
                np.testing.assert_array_equal(i_ray, i_flat)
                np.testing.assert_allclose(d_ray, d_flat, rtol=1e-5, atol=1e-6)
        finally:
            sharded.close()


def test_embed_resumes_with_only_the_missing_shards(ray_local, tiny_sets, tmp_path, capsys):
    """``ganaudit embed --engine ray`` fills the entry ``check`` reads; a rerun embeds only what is missing."""
    from ganaudit.embedders import create_embedder
    from ganaudit.embedders.cache import _Entry, cache_key, embed_image_set
    from ganaudit.sources.datasets import open_image_set

    embed = ("embed", tiny_sets["train"], "--embedder", "pixels-copy", "--cache-dir", tmp_path, "--shard-size", "32")
    code, out, _ = run_cli(*embed, capsys=capsys)  # the local engine makes the entry (one Ray job is enough)
    dim = create_embedder("pixels-copy", "cpu").spec.dim
    assert code == 0 and f"pixels-copy: 120 images x {dim}, 4 shards (0 from the cache, 4 embedded" in out, out
    code, out, _ = run_cli(*embed, "--engine", "ray", capsys=capsys)  # a joined entry: nothing to do
    assert code == 0 and "4 shards (4 from the cache, 0 embedded" in out, out
    entry = Path(out.rsplit(": ", 1)[1].strip())
    # as if a job had died after writing shards 0 and 2 only: chunk files, no joined matrix
    images, embedder = open_image_set(tiny_sets["train"]), create_embedder("pixels-copy", "cpu")
    expected = embed_image_set(images, embedder, 128, None, "local", False)
    for name in ("features.npy", "features.json"):
        (entry / name).unlink()
    partial = _Entry(entry, cache_key(images, embedder)[1], len(images), embedder.spec.dim, 32)
    for i in (0, 2):
        partial.write_chunk(i, expected[32 * i:32 * (i + 1)], np.ones(32, dtype=bool))
    code, out, _ = run_cli(*embed, "--engine", "ray", capsys=capsys)
    assert code == 0 and "4 shards (2 from the cache, 2 embedded, 0 duplicates" in out, out
    code, out, _ = run_cli(*embed, capsys=capsys)  # the local engine finds every shard (and joins them)
    assert code == 0 and "4 shards (4 from the cache, 0 embedded" in out, out
    cached = embed_image_set(open_image_set(tiny_sets["train"]), _NoForward(embedder), 128, tmp_path, "read", False)
    np.testing.assert_array_equal(cached, expected)  # the entry the local engine reads, bit for bit


class _NoForward:
    """The embedder's key without its forward pass: reading the cache must not embed."""

    def __init__(self, embedder):
        self.spec, self.identity = embedder.spec, embedder.identity

    def embed(self, images):
        raise AssertionError("a shard was missing from the cache")


def test_samples_drawn_by_seed_ranges_match_the_local_stream(ray_local, tiny_sets):
    """Sample i from seed [s, i] on whichever actor: same features, same matches as one process."""
    from ganaudit.audit import open_generated
    from ganaudit.config import AuditConfig
    from ganaudit.embedders import create_copy_embedder, create_embedder
    from ganaudit.engines.ray import RayEngine
    from ganaudit.search.copy_search import CopySearcher, search_source
    from ganaudit.search.index import FlatIndex
    from ganaudit.sources.datasets import open_image_set

    config = AuditConfig(train=tiny_sets["train"], generator=tiny_sets["copy_gen"], num_samples=90, seed=7,
                         batch_size=10, device="cpu", engine="ray")  # 3 seed ranges of 4 x 10, the last short
    embedder = create_embedder("pixels", "cpu")
    copy = create_copy_embedder("auto", embedder, "cpu")
    train = embed_all(open_image_set(tiny_sets["train"]), copy)
    searcher = CopySearcher(FlatIndex(train, copy.spec.metric), copy, ("flip", "shift"), 50, embedder=embedder)
    source = open_generated(config, "cpu")
    local = search_source(source, searcher, 10, "local", False, keep_copy_features=25)
    with RayEngine(device="cpu") as engine:
        remote = engine.search_generated(source, searcher, 10, "ray", False, 25, config)
    np.testing.assert_array_equal(remote.features, local.features)
    np.testing.assert_array_equal(remote.copy_features, local.copy_features)
    for name in ("train_index", "augmentation", "score", "distance"):
        np.testing.assert_array_equal(getattr(remote.matches, name), getattr(local.matches, name))
    assert remote.matches.names == local.matches.names
    np.testing.assert_array_equal(remote.contrast, local.contrast)


def embed_all(images, embedder) -> np.ndarray:
    from ganaudit.embedders.cache import embed_image_set

    return embed_image_set(images, embedder, 64, None, "train", False)


def _figures(section, prefix=""):
    """Every number of a result section, by dotted path; an entry of a list that names its sample
    or training image is keyed by them, not by its place (entries sorted by a score can swap
    where two scores tie at float32 noise: samples that copy one image exactly)."""
    out = {}
    if isinstance(section, dict):
        for k, v in section.items():
            out.update(_figures(v, f"{prefix}{k}."))
    elif isinstance(section, list):
        for i, v in enumerate(section):
            named = isinstance(v, dict) and ("sample_index" in v or "train_index" in v)
            key = f"s{v.get('sample_index')}t{v.get('train_index')}" if named else i
            out.update(_figures(v, f"{prefix}{key}."))
    elif isinstance(section, (int, float)) and not isinstance(section, bool):
        out[prefix.rstrip(".")] = float(section)
    return out


def assert_same_audit(local: dict, distributed: dict) -> None:
    """Same verdict, same flagged list, every figure equal to float32 precision."""
    assert distributed["verdict"] == local["verdict"]
    keys = ("sample_index", "seed", "train_index", "augmentation")

    def flagged(result):  # by sample: the list is sorted by score, and samples that copy the same
        # image exactly tie at float32 noise (their order may differ; their scores may not)
        return sorted(({k: f.get(k) for k in keys} for f in result["memorization"]["flagged"]),
                      key=lambda f: f["sample_index"])

    assert flagged(distributed) == flagged(local)
    scores = [{f["sample_index"]: f["score"] for f in r["memorization"]["flagged"]} for r in (local, distributed)]
    for i, score in scores[0].items():
        assert scores[1][i] == pytest.approx(score, rel=1e-5, abs=1e-5), i
    assert [g["status"] for g in distributed["gates"]] == [g["status"] for g in local["gates"]]
    for section in ("memorization", "coverage"):
        a, b = _figures(local[section]), _figures(distributed[section])
        assert a.keys() == b.keys()
        for path in a:
            if math.isnan(a[path]):
                assert math.isnan(b[path]), path
            else:
                assert b[path] == pytest.approx(a[path], rel=1e-5, abs=1e-6), path


@pytest.mark.slow
def test_fixtures_give_the_same_audit_on_ray(ray_local, tmp_path):
    """The shipped leaky fixture: --engine ray and the default agree (verdict, flags, figures)."""
    common = ("--generator", FIXTURES / "generators" / "leaky.pt2", "--train", FIXTURES / "data" / "train",
              "--holdout", FIXTURES / "data" / "holdout", "--num-samples", "300", "--cache-dir", tmp_path / "cache")
    results = {}
    for engine in ("local", "ray"):
        code, _, _ = run_cli("check", *common, "--engine", engine, "--json", tmp_path / f"{engine}.json")
        results[engine] = (code, json.loads((tmp_path / f"{engine}.json").read_text()))
    assert results["ray"][0] == results["local"][0] == 1
    assert results["local"][1]["memorization"]["n_flagged"] > 0
    assert_same_audit(results["local"][1], results["ray"][1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


_TOKEN = os.urandom(16).hex()


def _cluster_env() -> dict:
    """The environment of every process of the separate-process cluster: usage stats off, and
    Ray's token authentication with a token of this test's own."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a worker node refuses to start without clusters
    env.pop("RAY_ADDRESS", None)
    return env


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    """``ray start --block ...`` in a process group of its own (the node's processes die with it)."""
    return subprocess.Popen([_ray_cli(), "start", "--block", "--disable-usage-stats", *args], env=_cluster_env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    try:  # the node's daemons share the group: none may outlive the test
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ConvFeatures(torch.nn.Module):
    """A user embedder that costs a real forward pass (about 0.3 GFLOP an image)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 48, 5, padding=2)
        self.input_size = 192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1)


@pytest.mark.slow
def test_a_worker_killed_mid_embedding_leaves_every_shard_once(tmp_path):
    """Head and worker as separate processes; the worker node dies while shards remain."""
    import ray as _ray  # noqa: F401  (the extra must be installed)

    from ganaudit.embedders import create_embedder
    from ganaudit.embedders.cache import embed_image_set
    from ganaudit.sources.datasets import open_image_set

    images = write_image_folder(tmp_path / "train", n_classes=4, per_class=150, size=32, seed=3)  # 600 images
    model = save_torchscript(ConvFeatures(), tmp_path / "conv.pt")
    name = f"torchscript:{model}"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    node = ["--num-cpus", "1", "--num-gpus", "0"]
    # Ray replaces a loopback --node-ip-address by the host's own address (still this machine).
    head = _start_node(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                        "--include-dashboard", "false", *node], tmp_path / "head.log")
    worker = driver = None
    try:
        _wait_for(lambda: _nodes(address) >= 1, head, tmp_path / "head.log")
        worker = _start_node(["--address", address, *node], tmp_path / "worker.log")
        _wait_for(lambda: _nodes(address) >= 2, worker, tmp_path / "worker.log")
        cache = tmp_path / "cache"
        driver = subprocess.Popen(
            [sys.executable, "-m", "ganaudit", "embed", str(images), "--engine", "ray", "--ray-address", address,
             "--cache-dir", str(cache), "--shard-size", "20", "--embedder", name, "--device", "cpu", "-v"],
            env=_cluster_env(), cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while len(list(cache.glob("features/*/chunk-*.bin"))) < 4:  # a few shards done, most to do
            assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()[0][-3000:]
            time.sleep(0.05)
        done_at_kill = len(list(cache.glob("features/*/chunk-*.bin")))
        _stop(worker)  # the whole worker node: raylet, its workers and the actor on it
        out, _ = driver.communicate(timeout=240)
        assert driver.returncode == 0, out[-3000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        for proc in (worker, head):
            if proc is not None:
                _stop(proc)
        _forget_cluster(address)
    assert done_at_kill < 30, "the worker was killed after the job, not in the middle of it"
    line = next(l for l in out.splitlines() if l.startswith(name + ": "))
    print(f"worker killed with {done_at_kill} of 30 shards written; {line}")
    print("\n".join(l for l in out.splitlines() if "embedding job run" in l))
    assert re.search(r"600 images x 768, 30 shards \(0 from the cache, 30 embedded, \d+ duplicates dropped\)", line), line
    entries = {}  # the network's entry, and pixels-copy's (the copy descriptor a network gets on a CPU)
    for p in cache.glob("features/*/chunk-*.bin"):
        entries.setdefault(p.parent.name, []).append(p.name)
    assert entries and all(sorted(c) == [f"chunk-{i:06d}.bin" for i in range(30)]  # every shard, each once
                           for c in entries.values()), entries
    embedder = create_embedder(name, "cpu")
    expected = embed_image_set(open_image_set(images), embedder, 20, None, "local", False)
    cached = embed_image_set(open_image_set(images), _NoForward(embedder), 20, cache, "read", False)
    np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-6)


def _wait_for(ready, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(1)


def _nodes(address: str) -> int:
    """Alive nodes of the cluster, from ``ray status`` (0 while it does not answer)."""
    done = subprocess.run([_ray_cli(), "status", "--address", address], capture_output=True, text=True, timeout=60,
                          env=_cluster_env())
    if done.returncode != 0:
        return 0
    active = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return active.count("node_")


def _forget_cluster(address: str) -> None:
    """A killed head leaves /tmp/ray/ray_current_cluster naming it; a later ray.init must not find it."""
    marker = Path("/tmp/ray/ray_current_cluster")
    try:
        if marker.read_text().strip().rsplit(":", 1)[-1] == address.rsplit(":", 1)[-1]:
            marker.unlink()
    except OSError:
        pass


@pytest.mark.parametrize("args, message", [
    (("--shard-size", "0"), r"--shard-size must be a positive integer"),
    (("--engine", "spark"), r"--engine must be one of local, ray"),
    (("--ray-address", "auto"), r"--ray-address needs --engine ray"),
    (("--batch-size", "0"), r"--batch-size must be a positive integer"),
])
def test_embed_refuses_bad_settings(tiny_sets, tmp_path, capsys, args, message):
    code, _, err = run_cli("embed", tiny_sets["train"], "--cache-dir", tmp_path, *args, capsys=capsys)
    assert code == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "features").exists()
