"""bench.loaders: every registered loader variant over a tiny prepared folder, on the CPU; the
dataloader workload's row for the storage formats; the suites that compare them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import LoaderParams, Measure
from bench.loaders import LOADERS, LoaderRequest, endless, labelled_ids, storage_fields
from bench.suite_file import load_suite
from bench.variants import VariantContext, resolve
from seg.data.store import save_case, write_json

IDS = ["A", "B", "C"]
SIZE = 12


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(1)
    for case_id in IDS:
        image = torch.from_numpy(rng.random((4, SIZE, SIZE, SIZE), dtype=np.float32))
        label = torch.from_numpy(rng.integers(0, 4, (1, SIZE, SIZE, SIZE)))
        save_case(root / f"{case_id}.pt", image, label, {"id": case_id})
    write_json(root / "manifest.json", {"config": {"size": SIZE, "format": "pt32"},
                                        "cases": [{"id": i, "status": "ok", "has_label": True} for i in IDS]})
    return root


def _request(prepared: Path, cache: Path, **kw) -> LoaderRequest:
    base = dict(data_dir=prepared, ids=labelled_ids(prepared), batch_size=2, workers=0, seed=3,
                patch=[8, 8, 8], train=True, device="cpu", cache_dir=cache)
    return LoaderRequest(**{**base, **kw})


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_every_loader_yields_training_batches(prepared, tmp_path_factory, name):
    cache = tmp_path_factory.getbasetemp() / "cache"
    batches = endless(LOADERS[name].build(_request(prepared, cache)))
    seen = set()
    for _ in range(3):  # crosses an epoch boundary (3 cases, batches of 2)
        batch = next(batches)
        spatial = (SIZE,) * 3 if name == "no_augment" else (8, 8, 8)
        assert batch["image"].shape[1:] == (4, *spatial) and batch["image"].dtype == torch.float32
        assert batch["label"].shape[1:] == (1, *spatial) and batch["label"].dtype == torch.int64
        assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3}
        seen.update(batch["id"])
    assert seen == set(IDS)
    fmt = LOADERS[name].format
    if fmt in ("compact", "mmap"):  # a converted copy in the run's cache, not beside the data
        assert len(list((cache / "formats").glob(f"*.{fmt}"))) == 1
        assert not list(prepared.parent.glob(f"*.{fmt}"))


def test_the_seed_variants_are_the_seed_pipeline_and_the_device_one_replays_it(prepared, tmp_path):
    from seg.data.loaders import build_loader, endless_batches

    seed = endless_batches(build_loader(prepared, labelled_ids(prepared), 2, train=True, seed=3,
                                        patch=[8, 8, 8]))
    a = endless(LOADERS["default"].build(_request(prepared, tmp_path)))
    b = endless(LOADERS["pt32-cpu-aug"].build(_request(prepared, tmp_path)))
    device = endless(LOADERS["pt32"].build(_request(prepared, tmp_path)))  # the same draws, on the device
    for _ in range(3):
        ref, x, y, d = next(seed), next(a), next(b), next(device)
        for got in (x, y):
            assert torch.equal(got["image"], ref["image"]) and torch.equal(got["label"], ref["label"])
        assert d["id"] == ref["id"] and torch.equal(d["label"], ref["label"])
        # same crops, flips and rotations, only the noise values differ (drawn on the device): at most
        # ~0.11 mean |difference| from noise, ~0.33 from uniform voxels put in the wrong place
        assert ((d["image"] - ref["image"]).abs().mean(dim=(1, 2, 3, 4)) < 0.2).all()


def test_storage_fields_name_the_bytes_read(prepared):
    assert storage_fields("pt32-cpu-aug", prepared) == {"format": "pt32",
                                                        "stored_bytes_per_sample": 24 * SIZE**3}
    assert storage_fields("mmap", prepared)["stored_bytes_per_sample"] == 9 * SIZE**3
    assert storage_fields("default", prepared)["format"] == "pt32"


def test_a_packed_folder_is_a_loader_s_data_too(prepared, tmp_path):
    """README: every loader takes a packed folder; its cases and format come from the pack's index."""
    from seg.data.formats import convert

    packed = convert(prepared, tmp_path / "packed", "mmap", progress=False)
    assert labelled_ids(packed) == IDS
    assert storage_fields("default", packed) == {"format": "mmap", "stored_bytes_per_sample": 9 * SIZE**3}
    batch = next(endless(LOADERS["default"].build(_request(packed, tmp_path / "cache"))))
    assert batch["image"].shape[1:] == (4, 8, 8, 8)


@pytest.mark.parametrize("variant, workers, fmt", [("loader:mmap+workers:0", 0, "mmap"),
                                                   ("loader:gpu-resident+workers:4", 0, "resident")])
def test_dataloader_workload_reports_format_and_rates(prepared, tmp_path, variant, workers, fmt):
    from bench.workloads import dataloader
    from bench.workloads.common import Case

    config = resolve(variant, VariantContext("dataloader", None, "cpu"))
    case = Case(suite="t", workload="dataloader", kind="dataloader", variant=variant, device="cpu",
                params=LoaderParams(batch=2, workers=2), config=config,
                measure=Measure(warmup=1, iters=3), cache_dir=str(tmp_path), data_dir=str(prepared))
    row = dataloader.run(case)
    assert row["format"] == fmt and row["workers"] == workers  # gpu-resident uses no worker
    assert row["samples_per_s"] > 0 and row["mb_per_s"] > row["stored_mb_per_s"] > 0
    assert row["sample_shape"] == [4, SIZE, SIZE, SIZE]


def test_suites_compare_the_storage_formats_and_feed_the_unet_from_the_gpu():
    quick = {w.kind: w for w in load_suite("quick").workloads}
    loaders = {resolve(v, VariantContext("dataloader", None, "cpu")).loader or "default"
               for v in quick["dataloader"].variants}
    assert {"default", "compact-cpu-aug", "mmap-cpu-aug", "mmap"} <= loaders
    check = [w for w in load_suite("gpu-check").workloads if w.kind == "train_e2e"]
    assert any(w.params.model == "unet" and "bf16+loader:gpu-resident" in w.variants for w in check)
    full = {v for w in load_suite("dataloader").workloads for v in w.variants}
    for name in ("pt32-cpu-aug", "compact-cpu-aug", "mmap-cpu-aug", "compact", "mmap", "gpu-resident"):
        assert any(f"loader:{name}" in v for v in full), name


def test_timed_batches_are_delivered_on_the_case_device(prepared, tmp_path):
    # A CPU-augmenting loader's batch is timed until it is where the step runs, as the device loaders'
    # are ("meta" stands in for CUDA: the copy is made, nothing waits on it).
    from bench.workloads.dataloader import _timed_next

    batches = endless(LOADERS["pt32-cpu-aug"].build(_request(prepared, tmp_path)))
    seconds, batch = _timed_next(batches, torch.device("meta"))()
    assert seconds >= 0 and batch["image"].is_meta and batch["label"].is_meta
    assert batch["image"].shape == (2, 4, 8, 8, 8) and len(batch["id"]) == 2


@pytest.mark.parametrize("wait_s, compute_s, verdict",
                         [(0.05, 0.15, "input-bound"), (0.01, 0.19, "compute-bound")])
def test_train_e2e_verdict_follows_the_share_of_time_spent_waiting(monkeypatch, wait_s, compute_s, verdict):
    # the step's (wait, compute, samples) stubbed: the row's arithmetic, not this machine's timing
    from bench.config import E2EParams
    from bench.workloads import train_e2e
    from bench.workloads.common import Case

    def setup(case):
        fields = {"workers": 2, "_shape": [8, 8, 8], "_cpu_bf16_workaround": False}
        return (lambda: (wait_s, compute_s, 2)), torch.device("cpu"), fields

    monkeypatch.setattr(train_e2e, "_setup", setup)
    case = Case(suite="t", workload="e2e", kind="train_e2e", variant="fp32", device="cpu",
                params=E2EParams(batch=2), config=resolve("fp32", VariantContext("train_e2e", "unet", "cpu")),
                measure=Measure(warmup=0, iters=4))
    row = train_e2e.run(case)
    assert row["wait_fraction"] == pytest.approx(wait_s / (wait_s + compute_s))
    assert row["verdict"] == verdict and train_e2e.INPUT_BOUND_SHARE == 0.10
    assert row["samples_per_s"] == pytest.approx(2 / (wait_s + compute_s))
    assert row["compute_samples_per_s"] == pytest.approx(2 / compute_s)
    assert row["warmup_steps"] == 6 and row["data_wait_s"]["n"] == 4  # 2 x workers + 2 before timing
