"""FLOPs and bytes of a compiled XLA executable, with its loops counted as often as they run.

XLA's own ``compiled.cost_analysis()`` counts the body of a while loop once, whatever its
trip count (a 100-step loop of a 64×64 matmul reports one matmul), so every scan-based mixer
would look nearly free. This reads the optimized HLO text instead, with the rules of XLA's
HloCostAnalysis, and multiplies a while loop's body and condition by the loop's
``known_trip_count``:

- flops: a dot is 2 · (output elements) · (contracted size); a convolution 2 · (output
  elements) · (kernel elements per output feature); an elementwise op 1 per output element;
  a reduce 1 per input element. Transcendentals (exp, log, tanh, ...) are counted apart, as
  XLA does. Fusions are counted by what they fuse.
- bytes: each instruction of a computation that runs (not inside a fusion) reads its
  operands and writes its result, with parameters, constants, tuples, bitcasts and
  get-tuple-element free: the traffic a fused program makes between kernels.

A while loop without a known trip count is counted once and reported in ``unknown_loops``.
"""

import dataclasses
import json
import math
import re

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "sign",
    "compare", "select", "and", "or", "xor", "not", "remainder", "floor", "ceil",
    "round-nearest-even", "round-nearest-afz", "clamp", "real", "imag", "complex", "atan2",
}  # fmt: skip
_TRANSCENDENTAL = {
    "exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic", "sqrt",
    "rsqrt", "cbrt", "power", "sine", "cosine", "tan", "erf",
}  # fmt: skip
_PARTIAL_READS = {"dynamic-slice", "slice", "dynamic-update-slice"}
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"}
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"\s*([\w\-]+)\((.*)$")


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    transcendentals: float = 0.0
    bytes: float = 0.0
    unknown_loops: int = 0

    def add(self, other: "Cost", times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.transcendentals += times * other.transcendentals
        self.bytes += times * other.bytes
        self.unknown_loops += other.unknown_loops


@dataclasses.dataclass
class _Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    arguments: str
    attributes: str
    root: bool


def _elements(shape: str) -> int:
    return sum(math.prod(int(d) for d in dims.split(",") if d) for _, dims in _SHAPE.findall(shape))


def _bytes(shape: str) -> int:
    return sum(
        _DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in _SHAPE.findall(shape)
    )


def _parse(text: str) -> tuple[dict[str, list[_Instruction]], str]:
    """The computations of an HLO module by name, and the name of its entry computation."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%([\w.\-]+) \(.*\{$", line)
        if header:
            current = header.group(2)
            computations[current] = []
            if header.group(1):
                entry = current
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            name, rest = match.groups()
            if rest.startswith("("):  # a tuple shape, which may hold /*index=N*/ comments
                end = _closing(rest, 1)
                shape, rest = rest[: end + 1], rest[end + 1 :]
            else:
                shape, _, rest = rest.partition(" ")
            opcode = _OPCODE.match(rest)
            if opcode is None:
                continue
            opcode, rest = opcode.groups()
            end = _closing(rest, 0)
            operands = re.findall(r"%([\w.\-]+)", rest[:end])
            computations[current].append(
                _Instruction(
                    name,
                    shape,
                    opcode,
                    operands,
                    rest[:end],
                    rest[end:],
                    line.lstrip().startswith("ROOT "),
                )  # fmt: skip
            )
    return computations, entry


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis that closes one opened just before ``text[start]``."""
    depth = 1
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    return len(text)


def _called(attributes: str, key: str) -> list[str]:
    match = re.search(key + r"=\{?([%\w.\-, ]+)\}?", attributes)
    return re.findall(r"%([\w.\-]+)", match.group(1)) if match else []


def _trip_count(attributes: str) -> int | None:
    match = re.search(r"backend_config=(\{.*\})", attributes)
    if not match:
        return None
    try:
        config = json.loads(match.group(1))
    except json.JSONDecodeError:
        found = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', match.group(1))
        return int(found.group(1)) if found else None
    count = config.get("known_trip_count", {}).get("n")
    return int(count) if count is not None else None


def _arithmetic(instruction: _Instruction, shapes: dict[str, str]) -> Cost:
    """The flops of one instruction by itself (not of what it calls)."""
    cost = Cost()
    opcode, output = instruction.opcode, _elements(instruction.shape)
    if opcode == "dot":
        lhs = _SHAPE.search(shapes[instruction.operands[0]]).group(2).split(",")
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instruction.attributes)
        contracted = math.prod(int(lhs[int(d)]) for d in dims.group(1).split(",") if d)
        cost.flops = 2.0 * output * contracted
    elif opcode == "convolution":
        kernel = _elements(shapes[instruction.operands[1]])
        labels = re.search(r"dim_labels=\w+_(\w+)->", instruction.attributes).group(1)
        kernel_dims = _SHAPE.search(shapes[instruction.operands[1]]).group(2).split(",")
        output_features = int(kernel_dims[labels.index("o")])
        cost.flops = 2.0 * output * kernel / output_features
    elif opcode in _ELEMENTWISE:
        cost.flops = float(output)
    elif opcode in _TRANSCENDENTAL:
        cost.transcendentals = float(output)
    elif opcode in ("reduce", "reduce-window"):
        cost.flops = float(_elements(shapes[instruction.operands[0]]))
    return cost


def _computation_cost(name, computations, cache, *, fused: bool) -> Cost:
    key = (name, fused)
    if key in cache:
        return cache[key]
    instructions = computations[name]
    shapes = {i.name: i.shape for i in instructions}
    cost = Cost()
    for instruction in instructions:
        cost.add(_arithmetic(instruction, shapes))
        opcode = instruction.opcode
        if opcode == "fusion":
            for called in _called(instruction.attributes, "calls"):
                inner = _computation_cost(called, computations, cache, fused=True)
                cost.add(dataclasses.replace(inner, bytes=0.0))
        elif opcode == "while":
            trips = _trip_count(instruction.attributes)
            body = Cost()
            for part in ("body", "condition"):
                for called in _called(instruction.attributes, part):
                    body.add(_computation_cost(called, computations, cache, fused=fused))
            if trips is None:
                cost.unknown_loops += 1
            cost.add(body, trips or 1)
            continue  # its state stays where it is
        elif opcode in ("call", "conditional", "async-start"):
            branches = [
                _computation_cost(called, computations, cache, fused=fused)
                for part in ("to_apply", "calls", "branch_computations")
                for called in _called(instruction.attributes, part)
            ]
            if branches:
                cost.add(max(branches, key=lambda c: c.flops + c.bytes))
        if not fused and opcode not in _FREE:
            cost.bytes += _traffic(instruction, shapes, computations)
    cache[key] = cost
    return cost


def _traffic(instruction: _Instruction, shapes: dict[str, str], computations) -> float:
    """The bytes one instruction (not inside a fusion) reads and writes. As in XLA: a
    dynamic slice reads only its slice, and a dynamic update writes only its update in place
    (so a loop that updates one step of a [B, T, ...] buffer moves one step)."""
    operand_bytes = [_bytes(shapes[o]) if o in shapes else 0 for o in instruction.operands]
    if instruction.opcode == "dynamic-slice":
        return 2.0 * _bytes(instruction.shape)
    if instruction.opcode == "dynamic-update-slice":
        return 2.0 * operand_bytes[1]
    if instruction.opcode != "fusion":
        return float(_bytes(instruction.shape) + sum(operand_bytes))
    (called,) = _called(instruction.attributes, "calls")
    fused = computations[called]
    by_name = {i.name: i for i in fused}
    users: dict[str, list[tuple[_Instruction, int]]] = {}
    for inner in fused:
        for position, operand in enumerate(inner.operands):
            users.setdefault(operand, []).append((inner, position))
    total = 0.0
    for inner in fused:
        if inner.opcode != "parameter":
            continue
        index = int(inner.arguments)
        uses = users.get(inner.name, [])
        partial = [(u, p) for u, p in uses if p == 0 and u.opcode in _PARTIAL_READS]
        if uses and len(partial) == len(uses):
            # Sliced: only the slices are read. The buffer a dynamic update writes into in
            # place is not read: only the update is written, counted below.
            total += sum(_bytes(u.shape) for u, _ in partial if u.opcode != "dynamic-update-slice")
        elif index < len(operand_bytes):
            total += operand_bytes[index]
    (root,) = [inner for inner in fused if inner.root]
    for output in [by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]:
        if output.opcode == "dynamic-update-slice":
            total += _bytes(by_name[output.operands[1]].shape)
        else:
            total += _bytes(output.shape)
    return total


def executable_cost(compiled) -> Cost:
    """The cost of one call of ``compiled`` (a ``jax.stages.Compiled``)."""
    computations, entry = _parse(compiled.as_text())
    return _computation_cost(entry, computations, {}, fused=False)
