"""Property tests: no config value and no flag text makes ganaudit raise anything but a clear error.

Whatever a config file or the command line holds, resolving it either gives a valid config or a
``GanauditError`` (exit 2 with an ``error:`` line); never another exception, never exit 3.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ganaudit.cli import main
from ganaudit.config import AuditConfig, flag_fields, resolve_config
from ganaudit.errors import GanauditError

SETTINGS = [f.name for f in dataclasses.fields(AuditConfig) if f.name not in ("gates", "baseline_rules")]

# TOML can hold these: numbers of every size and kind, strings, booleans, lists, tables.
toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20) | st.sampled_from(["auto", "cpu", "flip", "0,1", "-1,1", "pixels", "ivf", "x:Y", "{}"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(SETTINGS), toml_values, max_size=4))
def test_any_config_file_values_give_a_config_or_a_clear_error(values):
    values = {k: v for k, v in values.items() if v is not None}  # TOML has no null
    try:
        config = resolve_config(values, {}, "ganaudit.toml")
    except GanauditError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(config, AuditConfig)  # only reachable with --train etc. valid: unlikely, but fine


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from([*SETTINGS, "gates", "baseline_rules"]), toml_values, max_size=5))
def test_values_beside_a_valid_train_and_generator_reach_every_check(tiny_sets, values):
    """With --train and --generator valid, the checks that combine settings run too."""
    values = {k: v for k, v in values.items() if v is not None and k not in ("train", "generator", "samples")}
    flags = {"train": tiny_sets["train"], "generator": tiny_sets["fresh_gen"]}
    try:
        config = resolve_config(values, flags, "ganaudit.toml")
    except GanauditError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(config, AuditConfig)


NUMERIC_FLAGS = [name for name, flag in flag_fields() if flag.parse in (int, float)]


def _text_of(x) -> str:
    return repr(x) if isinstance(x, float) and not math.isfinite(x) else str(x)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMERIC_FLAGS),
       st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=12)))
def test_any_numeric_flag_text_is_a_clear_error_or_accepted(tmp_path_factory, name, value):
    missing = tmp_path_factory.getbasetemp() / "no-such-train"
    argv = ["check", "--generator", str(missing), "--train", str(missing), f"--{name.replace('_', '-')}", _text_of(value)]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejected the text: its own one-line error, exit 2
        code = e.code
    # The audit never starts: after the value checks, the missing --train stops it with exit 2.
    assert code == 2


@pytest.mark.parametrize("name", NUMERIC_FLAGS)
def test_every_numeric_flag_is_checked_before_the_files(name, tmp_path, capsys):
    """A flag value out of range is named as the error even though --train is missing too."""
    missing = tmp_path / "missing"
    code = main(["check", "--generator", str(missing), "--train", str(missing), f"--{name.replace('_', '-')}",
                 "-1000000"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ")
    assert f"--{name.replace('_', '-')}" in err or "no such file" in err
