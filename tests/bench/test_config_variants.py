import json
from pathlib import Path

import pytest

from bench.config import SuiteError
from bench.suite_file import load_suite, parse_suite, suite_names
from bench.variants import CaseConfig, Unavailable, VariantContext, resolve, validate

HERE = Path(__file__).parent


def test_every_shipped_suite_loads():
    names = suite_names()
    for expected in (
        "quick",
        "swinunetr",
        "unet",
        "dynunet",
        "dataloader",
        "inference",
        "kernels",
        "gpu-check",
        "swin-goal",
    ):
        assert expected in names
    for name in names:
        assert load_suite(name).cases()


def test_quick_suite_covers_the_demo_promises():
    suite = load_suite("quick")
    assert suite.device == "cpu"
    kinds = {w.kind: w for w in suite.workloads}
    assert {"train_step", "train_e2e"} <= set(kinds)
    assert sum(len(w.variants) >= 4 for w in suite.workloads) >= 2
    assert "seed" in kinds["train_step"].variants


def test_gpu_check_runs_the_expensive_compile_last_within_a_budget():
    suite = load_suite("gpu-check")
    # one 600 s device call: ~25 s of install and `segbench env` before it, report and tarballs after
    assert suite.budget_s and suite.budget_s <= 540
    order = suite.run_order()
    assert f"{order[-1][1].name}/{order[-1][2]}" == "swinunetr_f24/bf16+compile"
    assert {w.kind for w in suite.workloads} == {
        "train_step",
        "train_e2e",
        "dataloader",
        "infer",
        "norm_kernel",
    }


def _suite(text: str) -> str:
    return 'name = "t"\n' + text


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\nmodle = "unet"\n', "unknown key(s) modle"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp33"]\n', "unknown variant 'fp33'"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["compile:fastest"]\n', "unknown torch.compile mode"),
        ('[[workload]]\nkind = "trainstep"\nvariants = ["fp32"]\n', "kind 'trainstep'"),
        ('[[workload]]\nkind = "dataloader"\nvariants = ["workers:x"]\n', "workers needs a count"),
        ('run_last = ["a/b"]\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n', "run_last"),
        ('[anchors]\n"x/fp32" = 1.0\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n', "anchors"),
        ("[[workload]\n", "not valid TOML"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n[[goal]]\ncase = "train_step/fp32"\n',
         "no criterion"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n[[goal]]\nmax_s_per_iter = 1.0\n',
         "[[goal]] 1: missing key(s) case"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["bf16+inductor:x=1"]\n', "add compile"),
        ('[measure]\niters = 0\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n',
         "[measure]: iters = 0 (at least 1)"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\nmeasure = { repeats = 0, warmup = -1 }\n',
         "workload 'train_step' [measure]: warmup = -1 (at least 0), repeats = 0 (at least 1)"),
        ('[measure]\niters = "5"\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n',
         "[measure]: iters = '5' (must be a whole number)"),
        # every value a suite file gives has its field's type and range, named with the file and key
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\nbatch = 0\nshape = [16, 16]\n',
         "workload 'train_step': shape = [16, 16] (3 whole numbers, each at least 1), batch = 0 "
         "(at least 1)"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\nbatch = "2"\n',
         "batch = '2' (must be a whole number)"),
        ('[[workload]]\nkind = "infer"\nvariants = ["fp32"]\noverlap = 1.5\nmode = "mean"\n',
         "overlap = 1.5 (a share of the window, in [0, 1)), mode = 'mean' (gaussian or constant)"),
        ('[[workload]]\nkind = "norm_kernel"\nvariants = ["fp32"]\neps = "x"\n',
         "eps = 'x' (must be a number)"),
        ('[data]\nformat = "png"\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n',
         "[data]: format = 'png' (pt32 or compact)"),
        ('measure = 3\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n', "must be a table of keys"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\nmeasure = 3\n',
         "workload 'train_step' [measure]: must be a table of keys"),
        ('[workload]\nkind = "train_step"\nvariants = ["fp32"]\n', "not [workload]"),
        ('[[workload]]\nkind = ["train_step"]\nvariants = ["fp32"]\n', "kind ['train_step'] is not one of"),
        ('[[workload]]\nkind = "train_step"\nname = 5\nvariants = ["fp32"]\n', "name 5 must be a non-empty"),
        ('[[workload]]\nkind = "train_step"\nvariants = "fp32"\n', "non-empty list of names, not 'fp32'"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32", "bf16", "fp32"]\n', "fp32 listed twice"),
        ('baseline = 3\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n',
         "baseline must be a variant name, not 3"),
        ('run_last = "a/b"\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n',
         "run_last must be a list"),
        ('[anchors]\n"train_step/fp32" = "abc"\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n',
         "[anchors]: each entry"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n[[goal]]\ncase = "train_step/fp32"\n'
         'max_s_per_iter = "fast"\n', "max_s_per_iter = 'fast' (must be a number or none)"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n[[goal]]\ncase = "train_step/fp32"\n'
         'min_speedup = { "train_step/fp32" = -1 }\n', "min_speedup train_step/fp32 = -1 (a number above 0)"),
        ('budget_s = "120"\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n',
         "budget_s must be a positive number of seconds, not '120'"),
        ('timeout_s = 0\n[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\n', "timeout_s must be"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["fp32"]\ninterleave = "no"\n',
         "interleave must be true or false, not 'no'"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["bf16+seed"]\n',
         "bf16 and seed each set the precision"),
        # a part given twice with other arguments: the last would win, so the order would matter
        ('[[workload]]\nkind = "train_e2e"\nvariants = ["bf16+workers:4+workers:8"]\n',
         "workers:4 and workers:8 each set the worker count"),
        ('[[workload]]\nkind = "dataloader"\nvariants = ["loader:mmap+loader:compact"]\n',
         "loader:mmap and loader:compact each set the loader"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["compile+inductor:a=1+inductor:a=0"]\n',
         "inductor option(s) a given twice"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["eager+compile"]\n',
         "eager and compile each set the torch.compile mode"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["compile+compile:max-autotune"]\n',
         "compile and compile:max-autotune each set the torch.compile mode"),
        ('[[workload]]\nkind = "train_step"\nvariants = ["ckpt:,"]\n', "names no module"),
        # an unavailable part (unet has no ckpt switch) does not hide a typo after it
        ('[[workload]]\nkind = "train_step"\nvariants = ["ckpt+compile:max_autotune"]\n',
         "unknown torch.compile mode 'max_autotune'"),
    ],
)
def test_bad_suite_files_name_the_file_and_the_problem(text, message):
    with pytest.raises(SuiteError) as err:
        parse_suite(_suite(text), Path("bad.toml"))
    assert "bad.toml" in str(err.value) and message in str(err.value)


def test_a_suite_file_that_is_not_text_is_one_line(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(SuiteError, match="latin.toml: cannot read the suite file"):
        load_suite(str(latin))


def test_unknown_suite_lists_the_shipped_ones():
    with pytest.raises(SuiteError, match="quick"):
        load_suite("no-such-suite")


def test_variants_compose_in_order():
    ctx = VariantContext(kind="train_step", model="swinunetr", device="cuda")
    cfg = resolve("bf16+channels_last+compile:max-autotune+sdpa", ctx)
    assert (cfg.precision, cfg.channels_last, cfg.compile_mode, cfg.sdpa) == (
        "bf16",
        True,
        "max-autotune",
        True,
    )
    seed = resolve("seed", ctx)
    assert seed.precision == "fp16" and seed.checkpointing is True and seed.compile_mode is None
    assert resolve("seed", VariantContext("train_step", "unet", "cpu")).checkpointing is None
    # ckpt alone: the Swin blocks (MONAI's switch); ckpt:NAMES: named submodules of any model
    both = resolve("bf16+ckpt+ckpt:encoder1,decoder1+ckpt:encoder1", ctx)
    assert both.checkpointing is True and both.checkpoint_modules == ("encoder1", "decoder1")
    named = resolve("ckpt:input_block", VariantContext("footprint", "dynunet", "cpu"))
    assert named.checkpoint_modules == ("input_block",) and named.checkpointing is None
    assert CaseConfig.from_dict(json.loads(json.dumps(both.to_dict()))) == both  # as a case receives it
    fast = resolve("bf16+swin_fast+triton_attn", ctx)
    assert fast.swin_fast and fast.swin_attention == "triton"
    assert resolve("bf16+swin_fast", ctx).swin_attention == "sdpa"
    # inductor options: one per part, in order, kept as written (the case types them with torch)
    tuned = resolve(
        "bf16+compile+inductor:triton.mix_order_reduction=0+inductor:max_autotune_gemm_backends=A,B", ctx
    )
    assert tuned.inductor == ("triton.mix_order_reduction=0", "max_autotune_gemm_backends=A,B")
    assert CaseConfig.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned
    with pytest.raises(ValueError, match="add compile"):
        resolve("bf16+inductor:triton.mix_order_reduction=0", ctx)
    with pytest.raises(ValueError, match="inductor takes NAME=VALUE"):
        resolve("compile+inductor:triton.mix_order_reduction", ctx)
    with pytest.raises(ValueError, match="window attention of the fast path; add swin_fast"):
        validate("bf16+triton_attn", "train_step", "swinunetr")  # a bad name at load, not a failed row


def test_a_variant_means_the_same_whatever_the_order_of_its_parts():
    ctx = VariantContext(kind="train_step", model="swinunetr", device="cuda")
    for name in ("bf16+channels_last+compile", "bf16+tf32", "seed+no_ckpt", "ckpt:encoder1+no_ckpt+bf16"):
        parts = name.split("+")
        assert resolve("+".join(reversed(parts)), ctx) == resolve(name, ctx), name
    mixed = resolve("tf32+bf16", ctx)  # TF32 for what runs outside autocast, not fp32 instead of bf16
    assert (mixed.precision, mixed.tf32) == ("bf16", True)
    assert (resolve("tf32", ctx).precision, resolve("tf32", ctx).tf32) == ("fp32", True)
    off = resolve("no_ckpt+seed", ctx)
    assert off.precision == "fp16" and off.checkpointing is False
    assert resolve("ckpt:encoder1+no_ckpt", ctx).checkpoint_modules == ()
    with pytest.raises(ValueError, match="compile given twice"):  # a second name for one case
        resolve("compile+compile", ctx)
    for name in ("fp32+bf16", "bf16+seed", "compile:max-autotune+compile:reduce-overhead"):
        with pytest.raises(ValueError, match="keep one"):
            resolve(name, ctx)


@pytest.mark.parametrize(
    "name, ctx, reason",
    [
        ("tf32", VariantContext("train_step", "unet", "cpu"), "CUDA"),
        ("fused_norm", VariantContext("train_step", "unet", "cpu"), "CUDA"),
        ("swin_fast+triton_attn", VariantContext("train_step", "swinunetr", "cpu"), "CUDA"),
        ("triton_attn", VariantContext("train_step", "unet", "cuda"), "SwinUNETR option"),
        ("compile:reduce-overhead", VariantContext("train_step", "unet", "cpu"), "graphs, which need CUDA"),
        ("ckpt", VariantContext("train_step", "unet", "cuda"), "no gradient-checkpointing"),
        ("ckpt:encoder1", VariantContext("infer", "swinunetr", "cuda"), "only matters when training"),
        ("sdpa", VariantContext("train_step", "dynunet", "cuda"), "no attention"),
        ("tta", VariantContext("train_step", "unet", "cuda"), "inference"),
        ("workers:2", VariantContext("train_step", "unet", "cuda"), "no data loader"),
        ("bf16", VariantContext("dataloader", None, "cuda"), "the loader alone has no model"),
        ("seed", VariantContext("dataloader", None, "cuda"), "the seed recipe trains and runs a model"),
        ("tf32", VariantContext("dataloader", None, "cuda"), "the loader alone has no model"),
    ],
)
def test_variants_that_cannot_run_here_say_why(name, ctx, reason):
    with pytest.raises(Unavailable, match=reason):
        resolve(name, ctx)


def test_swin_goal_measures_issue_7_against_its_baselines_in_one_run():
    suite = load_suite("swin-goal")
    variants = {w.name: set(w.variants) for w in suite.workloads}
    assert {"seed", "bf16", "bf16+swin_fast", "bf16+swin_fast+compile", "bf16+compile"} <= variants[
        "swinunetr_f24"
    ]
    assert "bf16+swin_fast" in variants["swinunetr_f48"]
    order = [f"{w.name}/{v}" for _, w, v in suite.run_order()]
    goal_cases = [g.case for g in suite.goals]
    # the H100 run (2026-11-28): compiled, the fast path was launch-bound and cuDNN converted layouts
    # around every convolution: the goals rest on CUDA graphs and channels-last, with SDPA's attention
    # and with the Triton one; the first goal's row first, then stock compile (its baseline, > 258 s):
    # one 600 s call; the second goal's row next
    assert goal_cases == [
        "swinunetr_f24/bf16+swin_fast+channels_last+compile:reduce-overhead",
        "swinunetr_f24/bf16+swin_fast+channels_last+triton_attn+compile:reduce-overhead"]
    assert order[:3] == [goal_cases[0], "swinunetr_f24/bf16+compile", goal_cases[1]]
    for goal in suite.goals:  # the speedups come from each row's own interleaved seed baseline
        assert set(goal.min_speedup) == {"swinunetr_f24/seed", "swinunetr_f24/bf16+compile"}
        assert goal.max_s_per_iter == 0.040 and goal.max_grad_dev and goal.card == "H100"
    assert suite.workloads[0].baseline == "seed"
    # one 600 s device call: install and `segbench env` before it, report and tarballs after
    assert suite.budget_s and suite.budget_s <= 540


def test_only_naming_no_case_is_an_error_before_anything_is_written(tmp_path):
    from bench.runner import BenchError, run_suite

    with pytest.raises(BenchError, match=r"--only train_stp: no such workload"):
        run_suite(HERE / "tiny_suite.toml", tmp_path / "run", only=["train_step/fp32", "train_stp"])
    assert not (tmp_path / "run").exists()


def test_goals_name_cases_of_the_suite(tmp_path):
    from bench.config import SuiteError
    from bench.suite_file import parse_suite

    text = """
name = "g"
[[workload]]
kind = "norm_kernel"
variants = ["fp32", "bf16"]
[[goal]]
case = "norm_kernel/bf16"
min_speedup = { "norm_kernel/fp16" = 2.0 }
"""
    with pytest.raises(SuiteError, match="goal names no case of the suite: norm_kernel/fp16"):
        parse_suite(text, tmp_path / "g.toml")
    goal = parse_suite(text.replace("fp16", "fp32"), tmp_path / "g.toml").goals[0]
    assert goal.case == "norm_kernel/bf16" and goal.min_speedup == {"norm_kernel/fp32": 2.0}
    with pytest.raises(SuiteError, match=r"\[\[goal\]\] 1: unknown key\(s\) max_speed"):
        parse_suite(text + "max_speed = 1\n", tmp_path / "g.toml")


def test_one_case_under_two_names_and_bad_inductor_values_are_refused_at_load(tmp_path):
    def suite(variants: str) -> str:
        return f'name = "g"\n[[workload]]\nkind = "train_step"\nmodel = "unet"\nvariants = [{variants}]\n'

    with pytest.raises(SuiteError, match="'bf16\\+channels_last' and 'channels_last\\+bf16' are one case"):
        parse_suite(suite('"bf16+channels_last", "channels_last+bf16"'), tmp_path / "g.toml")
    with pytest.raises(SuiteError, match="channels_last given twice"):
        parse_suite(suite('"channels_last+channels_last"'), tmp_path / "g.toml")
    with pytest.raises(SuiteError, match="coordinate_descent_tuning is a bool"):  # a mistake on any machine
        parse_suite(suite('"compile+inductor:coordinate_descent_tuning=maybe"'), tmp_path / "g.toml")
    # a name this torch lacks may be another torch's option: its row says unavailable, with near names
    loaded = parse_suite(suite('"compile+inductor:coordinate_descent_tunning=1"'), tmp_path / "g.toml")
    assert loaded.workloads[0].variants == ["compile+inductor:coordinate_descent_tunning=1"]


def test_a_model_or_loader_typo_is_refused_at_load(tmp_path):
    """A mistake on every machine: one error naming the file before anything runs (it made every row
    an error, or an `unavailable` row as if the machine lacked something, and exit status 0)."""
    head = 'name = "t"\n[[workload]]\n'
    cases = (('kind = "train_step"\nmodel = "unetx"\nvariants = ["fp32"]', "model = 'unetx'"),
             ('kind = "infer"\nmodel = "swin"\nvariants = ["fp32"]', "model = 'swin'"),
             ('kind = "dataloader"\nloader = "nosuch"\nvariants = ["workers:0"]', "loader = 'nosuch'"),
             ('kind = "train_e2e"\nloader = "nosuch"\nvariants = ["fp32"]', "loader = 'nosuch'"),
             ('kind = "dataloader"\nvariants = ["loader:nosuch"]', "no loader 'nosuch' registered"))
    for body, says in cases:
        with pytest.raises(SuiteError, match=f"t.toml: workload .*{says}"):
            parse_suite(head + body + "\n", tmp_path / "t.toml")


def test_the_seed_recipe_needs_a_model():
    with pytest.raises(Unavailable, match="the seed recipe trains and runs a model"):
        resolve("seed", VariantContext(kind="norm_kernel", model=None, device="cuda"))
