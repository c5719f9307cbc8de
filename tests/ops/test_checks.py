"""The ops' edges (seqjax.ops.checks and seqjax.ops.implementations): every op refuses integer
and boolean inputs where it means floating point, and B = 0 or T = 0, naming the argument;
values outside an op's domain are refused for concrete inputs and, under jit, by the checkify
debug mode, which leaves no trace in the program when off; a decay |a| > 1 is legal for
linear_recurrence; every op has one reference form named "reference", an old or unknown name
is an error listing the valid ones, and a form that cannot run says why and what can."""

import functools
import re

import jax
import numpy as np
import pytest
from jax.experimental import checkify

from seqjax.ops import attention, checks, delta_rule, implementations, linear_attention, mlstm, scan
from seqjax.ops.cells import elman_cell, run_cell
from seqjax.ops.conv import causal_conv1d

H, K, V = 2, 3, 2


def elman(gate_inputs, **options):
    cell = functools.partial(elman_cell, np.eye(3, dtype=np.float32))
    return run_cell(cell, gate_inputs, np.zeros((gate_inputs.shape[0], 3), np.float32), **options)


def arguments(batch=1, length=4):
    """Each op with valid arguments of B = ``batch``, T = ``length``."""

    def full(*shape, value=0.5):
        return np.full(shape, value, np.float32)

    heads = dict(q=full(batch, length, H, K), k=full(batch, length, H, K))
    heads["v"] = full(batch, length, H, V)
    per_head = full(batch, length, H)
    return {
        "linear_recurrence": (
            scan.linear_recurrence,
            dict(a=full(batch, length, 3), x=full(batch, length, 3)),
        ),
        "gated_linear_attention": (
            linear_attention.gated_linear_attention,
            dict(heads, log_decay=-per_head),
        ),
        "delta_rule": (delta_rule.delta_rule, dict(heads, beta=per_head, log_decay=-per_head)),
        "generalized_delta_rule": (
            delta_rule.generalized_delta_rule,
            dict(
                heads, removal_key=heads["k"], removal_direction=heads["k"], log_decay=-heads["k"]
            ),
        ),
        "mlstm": (mlstm.mlstm, dict(heads, input_gate=per_head, forget_gate=per_head)),
        "softmax_attention": (
            attention.softmax_attention,
            dict(
                q=heads["q"], k=heads["k"][:, :, :1], v=heads["v"][:, :, :1], log_forget=-per_head
            ),
        ),
        "causal_conv1d": (causal_conv1d, dict(x=full(batch, length, 3), kernel=full(2, 3))),
        "run_cell": (elman, dict(gate_inputs=full(batch, length, 3))),
    }


FLOATING_ARGUMENTS = [
    (op, name) for op, (_, arrays) in arguments().items() for name in arrays if op != "run_cell"
] + [("run_cell", "gate_inputs")]


@pytest.mark.parametrize(
    "op, name", FLOATING_ARGUMENTS, ids=[f"{op}-{name}" for op, name in FLOATING_ARGUMENTS]
)
@pytest.mark.parametrize("dtype", [np.int32, np.bool_])
def test_integer_and_boolean_inputs_are_refused_by_name(op, name, dtype):
    function, arrays = arguments()[op]
    arrays[name] = arrays[name].astype(dtype)
    expected = "floating point or complex" if op == "linear_recurrence" else "floating point"
    with pytest.raises(
        ValueError, match=rf"{op}: {name} must be {expected}, got {np.dtype(dtype)}"
    ):
        function(**arrays)


def test_segment_starts_must_be_boolean():
    function, arrays = arguments()["delta_rule"]
    with pytest.raises(ValueError, match="delta_rule: segment_starts must be boolean, got float32"):
        function(**arrays, segment_starts=np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("op", list(arguments()))
@pytest.mark.parametrize("batch, length", [(0, 4), (1, 0)], ids=["B=0", "T=0"])
def test_empty_batches_and_sequences_are_refused_by_name(op, batch, length):
    function, arrays = arguments(batch, length)[op]
    message = rf"{op}: \w+ must hold at least one sequence and one step, got B = {batch}, "
    message += rf"T = {length}"
    with pytest.raises(ValueError, match=message):
        function(**arrays)


OUT_OF_DOMAIN = [
    ("gated_linear_attention", "log_decay", 0.25, r"log_decay must be <= 0"),
    ("delta_rule", "beta", 2.5, r"beta must be in \[0, 2\], got values in \[0.5, 2.5\]"),
    ("delta_rule", "beta", -0.5, r"beta must be in \[0, 2\]"),
    ("delta_rule", "log_decay", 0.25, r"log_decay must be <= 0"),
    ("generalized_delta_rule", "log_decay", np.inf, r"log_decay must be <= 0"),
    ("softmax_attention", "log_forget", 0.25, r"log_forget must be <= 0"),
]
DOMAIN_IDS = [f"{op}-{name}={value}" for op, name, value, _ in OUT_OF_DOMAIN]


def with_one_value(arrays, name, value):
    array = np.array(arrays[name])
    array[0, -1, 0] = value  # one entry, at the last step
    return {**arrays, name: array}


@pytest.mark.parametrize("op, name, value, message", OUT_OF_DOMAIN, ids=DOMAIN_IDS)
def test_concrete_values_outside_the_domain_are_refused(op, name, value, message):
    function, arrays = arguments()[op]
    with pytest.raises(ValueError, match=f"{op}: {message}"):
        function(**with_one_value(arrays, name, value))


@pytest.mark.parametrize("op, name, value, message", OUT_OF_DOMAIN, ids=DOMAIN_IDS)
def test_a_concrete_value_inside_a_traced_function_is_refused_while_tracing(
    op, name, value, message
):
    function, arrays = arguments()[op]
    constant = with_one_value(arrays, name, value)[name]
    traced = {key: array for key, array in arrays.items() if key != name}
    with pytest.raises(ValueError, match=f"{op}: {message}"):
        jax.jit(lambda inputs: function(**inputs, **{name: constant}))(traced)


def test_nan_is_no_domain_error_and_a_growing_decay_is_legal():
    function, arrays = arguments()["delta_rule"]
    function(**with_one_value(arrays, "log_decay", np.nan))
    h, final = scan.linear_recurrence(np.full((1, 3, 1), 2.0), np.ones((1, 3, 1)))
    np.testing.assert_array_equal(h[0, :, 0], [1.0, 3.0, 7.0])  # h_t = 2 h_{t-1} + 1


@pytest.mark.parametrize("op, name, value, message", OUT_OF_DOMAIN, ids=DOMAIN_IDS)
def test_the_debug_mode_catches_values_outside_the_domain_under_jit(op, name, value, message):
    function, arrays = arguments()[op]
    checked = checkify.checkify(jax.jit(functools.partial(function, debug_checks=True)))
    error, _ = checked(**arrays)
    assert error.get() is None
    error, _ = checked(**with_one_value(arrays, name, value))
    assert error.get() is not None and f"{op}: " in error.get()
    assert re.search(message, error.get())


DOMAIN_OPS = sorted({op for op, *_ in OUT_OF_DOMAIN})


@pytest.mark.parametrize("op", DOMAIN_OPS)
def test_with_the_debug_mode_off_a_jitted_op_holds_no_check(op, monkeypatch):
    """The program lowered with debug_checks=False equals the one lowered with the domain
    checks removed from the op; with the mode on, the checks are in the trace."""
    function, arrays = arguments()[op]

    def lowered():  # a new function each time, so that nothing comes from a trace cache
        return jax.jit(lambda arrays: function(**arrays)).lower(arrays).as_text()

    assert "check" in str(jax.make_jaxpr(functools.partial(function, debug_checks=True))(**arrays))
    program = lowered()
    monkeypatch.setattr(checks, "in_range", lambda *args, **options: None)
    assert lowered() == program


OPS = {
    "linear_recurrence": scan,
    "gated_linear_attention": linear_attention,
    "delta_rule": delta_rule,
    "mlstm": mlstm,
    "softmax_attention": attention,
}


@pytest.mark.parametrize("op", list(OPS))
def test_every_op_names_its_reference_form_reference_and_the_old_names_are_unknown(op):
    assert OPS[op].IMPLEMENTATIONS[0] == implementations.REFERENCE
    function, arrays = arguments()[op]
    function(**arrays, implementation="reference")
    for old in ("sequential", "recurrent"):
        message = rf"{op}: unknown implementation '{old}'; expected None or one of \('reference'"
        with pytest.raises(ValueError, match=message):
            function(**arrays, implementation=old)
    with pytest.raises(ValueError, match=rf"{op}: implementation='pallas' cannot run: .*; use"):
        function(**arrays, implementation="pallas")


def test_select_picks_the_first_preferred_form_that_can_run():
    select = functools.partial(
        implementations.select, "op", names=("reference", "chunked", "pallas")
    )
    assert select(None, preferred=("pallas", "chunked"), cannot_run={"pallas": None}) == "pallas"
    assert select(None, preferred=("pallas", "chunked"), cannot_run={"pallas": "no"}) == "chunked"
    assert select("reference", preferred=("chunked",)) == "reference"
    message = r"op: implementation='pallas' cannot run: no GPU; use None or one of \('reference',"
    with pytest.raises(ValueError, match=message + r" 'chunked'\)"):
        select("pallas", preferred=("chunked",), cannot_run={"pallas": "no GPU"})
