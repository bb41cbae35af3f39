"""Reading suite files: TOML → `bench.config` dataclasses, every key and value checked.

A suite file (see bench/suites/*.toml) has top-level keys for the suite, a `[measure]` table of
defaults, an optional `[data]` table, `[anchors]`, `[[goal]]` tables and one `[[workload]]` table per
workload. Every key the dataclasses do not list, and every value of another type or out of range, is
one error naming the file, the workload and the key. Standard library only (tomllib), so `segbench
bench --list` starts instantly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from bench.config import (
    PARAMS,
    SUITES_DIR,
    DataSpec,
    Goal,
    Measure,
    Suite,
    SuiteError,
    Workload,
    is_number,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a TOML value has the type a field declares (int is no bool, a float may be written 2)."""
    if hint is Any:
        return True
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_conforms(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return is_number(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    if not isinstance(value, origin):
        return False
    return origin is not list or not args or all(_conforms(v, args[0]) for v in value)


def _type_name(hint: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table", type(None): "none"}
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(arg) for arg in args)
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0]).removeprefix('a ')}s"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise SuiteError(f"{where}: must be a table of keys, not {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SuiteError(f"{where}: missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    wrong = [f"{key} = {value!r} (must be {_type_name(hints[key])})" for key, value in values.items()
             if not _conforms(value, hints[key])]
    if wrong:  # else a TypeError, or a string read character by character, once the cases run
        raise SuiteError(f"{where}: {', '.join(wrong)}")
    try:
        return cls(**values)
    except ValueError as err:  # a value a params class refuses (its __post_init__)
        raise SuiteError(f"{where}: {err}") from None


def _seconds(value: Any, where: str, key: str) -> float:
    """A positive number of seconds from a suite file (TOML keeps "120" a string: refuse it here, not as
    a TypeError in the middle of a run)."""
    if not is_number(value) or not value > 0:
        raise SuiteError(f"{where}: {key} must be a positive number of seconds, not {value!r}")
    return float(value)


def _flag(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):  # bool("no") is True
        raise SuiteError(f"{where}: {key} must be true or false, not {value!r}")
    return value


def _workload(raw: dict, index: int, suite: dict, measure: dict, path: Path) -> Workload:
    from bench.variants import case_key, validate

    where = f"{path}: workload {index + 1}"
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: not a table (write each workload as [[workload]])")
    raw = dict(raw)
    kind = raw.pop("kind", None)
    if not isinstance(kind, str) or kind not in PARAMS:
        raise SuiteError(f"{where}: kind {kind!r} is not one of {', '.join(PARAMS)}")
    name = raw.pop("name", kind)
    if not isinstance(name, str) or not name or "/" in name:  # cases are named "workload/variant"
        raise SuiteError(f"{where}: name {name!r} must be a non-empty string without '/'")
    where = f"{path}: workload {name!r}"
    variants = raw.pop("variants", None)
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        raise SuiteError(f"{where}: 'variants' must be a non-empty list of names, not {variants!r}")
    seen: dict[tuple, str] = {}
    for variant in variants:  # two rows of one case: compare, goals and resume would each take one
        try:
            key = case_key(variant)
        except ValueError as err:
            raise SuiteError(f"{where}: {err}") from None
        if seen.get(key) == variant:
            raise SuiteError(f"{where}: variant(s) {variant} listed twice")
        if key in seen:
            raise SuiteError(f"{where}: {seen[key]!r} and {variant!r} are one case (the same parts)")
        seen[key] = variant
    own = {key: raw.pop(key) for key in ("baseline", "reference", "interleave", "timeout_s") if key in raw}
    for key in ("baseline", "reference"):
        value = own.get(key, suite.get(key))
        if value is not None and not isinstance(value, str):
            raise SuiteError(f"{where}: {key} must be a variant name, not {value!r}")
    own_measure = raw.pop("measure", {})
    if not isinstance(own_measure, dict):
        raise SuiteError(f"{where} [measure]: must be a table of keys, not {own_measure!r}")
    merged_measure = _build(Measure, {**measure, **own_measure}, f"{where} [measure]")
    params = _build(PARAMS[kind], raw, where)
    baseline = own.get("baseline", suite.get("baseline")) or None
    reference = own.get("reference", suite.get("reference", "fp32")) or None
    model = getattr(params, "model", None)
    for variant in [*variants, baseline, reference]:
        if variant:
            try:
                validate(variant, kind, model)
            except ValueError as err:
                raise SuiteError(f"{where}: {err}") from None
    return Workload(
        kind=kind,
        name=name,
        variants=list(variants),
        params=params,
        measure=merged_measure,
        baseline=baseline,
        reference=reference,
        interleave=_flag(own.get("interleave", suite.get("interleave", True)), where, "interleave"),
        timeout_s=_seconds(own.get("timeout_s", suite.get("timeout_s", 600.0)), where, "timeout_s"),
    )


def parse_suite(text: str, path: Path) -> Suite:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{path}: not valid TOML: {err}") from None
    workloads_raw = raw.pop("workload", [])
    if not workloads_raw:
        raise SuiteError(f"{path}: no [[workload]] tables")
    if not isinstance(workloads_raw, list):
        raise SuiteError(f"{path}: write each workload as [[workload]] (an array of tables), not [workload]")
    measure = raw.pop("measure", {})
    _build(Measure, measure, f"{path} [measure]")
    data = _build(DataSpec, raw.pop("data", {}), f"{path} [data]")
    anchors = raw.pop("anchors", {})
    if not isinstance(anchors, dict) or not all(_conforms(v, float) and v > 0 for v in anchors.values()):
        raise SuiteError(f"{path} [anchors]: each entry is \"workload/variant\" = seconds per step "
                         f"(above 0), not {anchors!r}")
    goals_raw = raw.pop("goal", [])
    if not isinstance(goals_raw, list):
        raise SuiteError(f"{path}: write each goal as [[goal]] (an array of tables), not [goal]")
    goals = [_build(Goal, g, f"{path} [[goal]] {i + 1}") for i, g in enumerate(goals_raw)]
    for i, g in enumerate(goals):  # a goal without a criterion would always read "met"
        if (g.max_s_per_iter is None and not g.min_speedup and g.max_peak_gib is None and g.max_parity is None
                and g.max_grad_dev is None):
            raise SuiteError(f"{path} [[goal]] {i + 1} ({g.case}): no criterion; give max_s_per_iter, "
                             "min_speedup, max_peak_gib, max_parity or max_grad_dev")
    suite_keys = {
        "name",
        "description",
        "device",
        "timeout_s",
        "budget_s",
        "baseline",
        "reference",
        "interleave",
        "run_last",
    }
    unknown = sorted(set(raw) - suite_keys)
    if unknown:
        raise SuiteError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(suite_keys))}"
        )
    workloads = [_workload(w, i, raw, measure, path) for i, w in enumerate(workloads_raw)]
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise SuiteError(f"{path}: workload names must be unique (give each a 'name'): {names}")
    run_last = raw.get("run_last", [])
    if not _conforms(run_last, list[str]):
        raise SuiteError(f"{path}: run_last must be a list of \"workload/variant\" names, not {run_last!r}")
    known_cases = {f"{w.name}/{v}" for w in workloads for v in w.variants}
    goal_cases = [c for g in goals for c in (g.case, *g.min_speedup)]
    for key, names in (("run_last", run_last), ("anchors", anchors), ("goal", goal_cases)):
        stray = [c for c in names if c not in known_cases]
        if stray:
            raise SuiteError(f"{path}: {key} names no case of the suite: {', '.join(stray)}")
    for key in ("name", "description"):
        if not isinstance(raw.get(key, ""), str):
            raise SuiteError(f"{path}: {key} must be a string, not {raw[key]!r}")
    device = raw.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise SuiteError(f"{path}: device must be cpu or cuda, not {device!r}")
    return Suite(
        name=raw.get("name", path.stem),
        description=raw.get("description", ""),
        device=device,
        workloads=workloads,
        path=path,
        timeout_s=_seconds(raw.get("timeout_s", 600.0), str(path), "timeout_s"),
        budget_s=None if raw.get("budget_s") is None else _seconds(raw["budget_s"], str(path), "budget_s"),
        data=data,
        run_last=list(run_last),
        anchors={k: float(v) for k, v in anchors.items()},
        goals=goals,
    )


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (`quick`), or a suite file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = SUITES_DIR / f"{name_or_path}.toml"
        if not shipped.is_file():
            raise SuiteError(
                f"no suite {str(name_or_path)!r}: not a file, and not one of {', '.join(suite_names())}"
            )
        path = shipped
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"{path}: cannot read the suite file: {err}") from None
    return parse_suite(text, path)
