"""`footprint`: the peak memory of the `train_step` workload's step, estimated on the CPU.

With `step = "infer"`: the peak of one sliding-window batch instead (`batch` windows of `shape`,
eval mode, no autograd, autocast) — what decides whether inference fits a card; the stitching
buffers of the whole volume (a few hundred MB for a BraTS volume in fp32) are not in it. With
`step = "infer_volume"`: the whole inference of one `volume` as `segbench infer` runs it
(seg.infer.sliding_window_predict: MONAI's sliding window with Gaussian blending, `batch` windows per
forward, softmax; with the `tta` variant all 8 flips), stitching buffers included; the Gaussian
weight map (a `shape`-sized float32 tensor) is made beforehand, outside the estimate.
Checkpointing switches change nothing there (no autograd: checkpoints run the plain forward).

The same model (seg.models with the variant's options and transforms, the workload's initial
weights), the same batch shape and the same step (seg.recipe.train_step: autocast forward,
DiceCE, backward, fused AdamW, GradScaler for fp16) as `train_step`, replayed on fake tensors by
`profiles.footprint` with CUDA's autocast, attention and dropout kernels. It always runs on the
CPU, whatever the suite's device, and needs no GPU: rows say so (`estimate_device`).

The row carries `estimate: true` and `estimated_peak_bytes` — `peak_bytes` (a measured peak
everywhere else) is null, as are `samples_per_s` and `first_step_s` — so a report cannot show an
estimate as a measurement. The number is allocated bytes (compare with CUDA max allocated, as in
shared/ANCHORS.md), for one batch on the device, as `train_step` measures its peak (its parity
batches are off the device by then). `anchor_peak_gib` in the workload puts the ANCHORS.md
measurement of the same configuration beside it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.variants import Unavailable
from bench.workloads.common import Case, build_model, initial_state, to_input

ESTIMATE_DEVICE = "cpu (fake tensors, CUDA kernel and autocast rules; no compute)"


def _supported(case: Case) -> None:
    cfg = case.config
    if cfg.tta and case.params.step != "infer_volume":
        raise Unavailable("test-time augmentation is estimated with step = 'infer_volume' only")
    if cfg.compile_mode:
        raise Unavailable(
            "torch.compile is not estimated: inductor's fused kernels save and free other tensors than eager"
        )


def make_step(case: Case) -> tuple[Callable[[], object], torch.device]:
    raise Unavailable("an estimate runs no step to profile; profile the train_step workload")


def run(case: Case) -> dict:
    _supported(case)
    p, cfg = case.params, case.config
    # The Triton kernels cannot run here, but their custom ops have fake implementations that
    # allocate what the CUDA kernels do.
    model = build_model(
        p.model,
        p.model_options,
        cfg,
        torch.device("cpu"),
        initial_state(p.model, p.model_options, case.measure.seed),
        require_kernels=False,
    )
    if p.step == "infer":
        fp = _estimate_inference(model, p, cfg)
    elif p.step == "infer_volume":
        fp = _estimate_volume(model, p, cfg)
    else:
        fp = _estimate_training(model, p, cfg)
    row: dict = {
        "model": p.model,
        "shape": p.shape,
        "batch": p.batch,
        "precision": cfg.precision,
        "estimate": True,
        "estimated_step": p.step,
        **({"volume": p.volume, "overlap": p.overlap} if p.step == "infer_volume" else {}),
        "estimate_device": ESTIMATE_DEVICE,
        # the contract's fields of every row, null: no step ran, nothing was measured
        "samples_per_s": None, "peak_bytes": None, "first_step_s": None,
        "estimated_peak_bytes": fp.peak_bytes,
        "estimated_peak_phase": fp.peak_phase,
        "estimated_peak_module": fp.peak_module,
        "estimated_bytes_by_category": fp.by_category_bytes,
        "estimated_top_modules": [list(t) for t in fp.top_modules],
        "estimate_notes": fp.notes,
        "estimate_s": round(fp.estimate_s, 2),
        "estimated_bytes_moved": fp.bytes_moved,  # eager, op by op (profiles.traffic)
        "estimated_ops": fp.ops,
        "estimated_bytes_moved_by_category": fp.bytes_moved_by_category,
    }
    anchor_gib = p.anchor_peak_gib.get(case.variant)
    if anchor_gib:
        row["anchor_peak_bytes"] = int(anchor_gib * 2**30)
        row["estimate_vs_anchor"] = fp.peak_bytes / row["anchor_peak_bytes"] - 1
    return row


def _estimate_training(model: torch.nn.Module, p, cfg):
    from profiles.footprint import estimate_step_memory
    from seg import recipe

    cpu = torch.device("cpu")
    model.train()
    loss_fn = recipe.build_loss()

    def make_inputs() -> tuple[torch.Tensor, torch.Tensor]:
        image = to_input(torch.empty(p.batch, 4, *p.shape), cfg, cpu)
        return image, torch.zeros(p.batch, 1, *p.shape, dtype=torch.long)

    def step(m, optimizer, image, label) -> None:
        scaler = recipe.make_scaler(cfg.precision, "cpu")
        recipe.train_step(m, image, label, loss_fn, optimizer, scaler, cfg.precision)

    return estimate_step_memory(model, make_inputs, lambda m: recipe.build_optimizer(m, lr=p.lr), step)


def _estimate_eval(model: torch.nn.Module, cfg, input_shape: tuple[int, ...], forward):
    """An inference estimate: `forward(model, x)` in eval mode on an input of `input_shape`."""
    from profiles.footprint import estimate_step_memory

    model.eval()

    def make_inputs() -> tuple[torch.Tensor]:
        return (to_input(torch.empty(*input_shape), cfg, torch.device("cpu")),)

    # plain SGD keeps no state: the estimate holds the weights and what the forward makes
    return estimate_step_memory(model, make_inputs, lambda m: torch.optim.SGD(m.parameters(), lr=0.0),
                                lambda m, optimizer, x: forward(m, x))


def _estimate_inference(model: torch.nn.Module, p, cfg):
    from seg.recipe import autocast

    def forward(m, windows) -> None:
        with torch.no_grad(), autocast(cfg.precision, "cpu"):
            m(windows)

    return _estimate_eval(model, cfg, (p.batch, 4, *p.shape), forward)


def _estimate_volume(model: torch.nn.Module, p, cfg):
    from monai.data.utils import compute_importance_map

    from seg.infer import sliding_window_predict

    # MONAI's default blending weights (gaussian, sigma 0.125), made for real: MONAI reads one back
    weights = compute_importance_map(tuple(p.shape), mode="gaussian", sigma_scale=0.125, device="cpu")

    def forward(m, volume) -> None:
        sliding_window_predict(m, volume, tuple(p.shape), overlap=p.overlap, sw_batch_size=p.batch,
                               tta=cfg.tta, precision=cfg.precision, roi_weight_map=weights)

    return _estimate_eval(model, cfg, (1, 4, *p.volume), forward)
