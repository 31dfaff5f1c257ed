"""Collectives in a compiled HLO module (``compiled.as_text()``, the program after SPMD
partitioning), counted per kind with the bytes they move.

What is counted, and how:
- One entry per collective instruction: ``all-gather``, ``reduce-scatter``, ``all-reduce``,
  ``all-to-all``, ``collective-permute``, ``collective-broadcast`` and their async ``-start``
  forms; ``-done`` halves are never counted, so an async pair counts once. Ops that the XLA
  wrapper ``async-start`` calls are found inside the called computation, the same way.
- XLA:TPU clones an op into the fusions that overlap it with compute (``async_collective_fusion``)
  and keeps its ``channel_id``: instructions of one kind sharing a channel id are one collective.
- XLA:TPU writes a reduce-scatter as an ``all-reduce`` inside a fusion computation named
  ``all-reduce-scatter``: counted as ``reduce-scatter``.
- Between slices (multi-slice, over DCN) XLA:TPU emits host-transfer ``send``/``recv`` pairs for
  the megascale runtime, tagged ``_xla_megascale_transfer_type="ALL_REDUCE"`` (etc.): each
  ``send`` is one DCN collective of its operand's bytes, kept apart as ``dcn:all-reduce``.
- Bytes of one op: the larger of its operands' and its results' bytes (element size x dims,
  tuples summed; a ``-start`` tuple's copies of the operands and its u32/s32 scalar context left
  out). That is the full gathered buffer of an all-gather, the full input of a reduce-scatter,
  the buffer of an all-reduce. Per chip, as the module is per chip.
- ``count``/``bytes`` are static (each op once). ``count_per_step``/``bytes_per_step`` multiply
  ops inside ``while`` loops by the loop's trip count (a scan over layers runs its body's
  collectives once per layer): XLA's ``known_trip_count`` where printed, else N of a condition
  ``i < N`` (how JAX lowers ``scan``; XLA:TPU's text prints no trip count). Loops of unknown
  trip count count once and are reported in ``unknown_trip_counts``.
"""
from __future__ import annotations

import collections
import dataclasses
import re

COLLECTIVE_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
                    "collective-permute", "collective-broadcast")
_OPCODES = {k: k for k in COLLECTIVE_KINDS} | {f"{k}-start": k for k in COLLECTIVE_KINDS}

# Bytes per element of HLO primitive types (xla/xla_data.proto).
_ELEMENT_BYTES = {"pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1,
                  "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                  "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0}
_ARRAY = re.compile(r"\b(pred|token|bf16|c64|c128|[suf]\d+|f8e\w+|f4e\w+)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply|branch_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_MEGASCALE = re.compile(r'_xla_megascale_transfer_type="(\w+)"')
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective op of the module (``bytes`` per chip, ``times`` executed per step)."""

    kind: str
    name: str
    computation: str
    bytes: int
    times: int
    channel_id: int | None


def _element_bytes(dtype: str) -> float:
    if dtype.startswith(("f8", "f4")):
        return 1 if dtype.startswith("f8") else 0.5
    return _ELEMENT_BYTES.get(dtype, 0)


def shape_bytes(type_text: str) -> list[int]:
    """Bytes of every array in an HLO type (``bf16[8,128]{1,0}`` or a tuple of them)."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(int(n * _element_bytes(dtype)))
    return out


def _split_type(rest: str) -> tuple[str, str]:
    """'TYPE opcode(...)...' -> (TYPE, 'opcode(...)...'); TYPE may be a parenthesised tuple."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


def _operands(call: str) -> list[str]:
    """Operand names of 'opcode(a, %b, f32[2] %c), attrs' (with or without inline types)."""
    depth, end = 0, len(call)
    for i, ch in enumerate(call):
        depth += (ch in "({") - (ch in ")}")
        if depth == 0 and ch == ")":
            end = i
            break
    return re.findall(r"%([\w.\-]+)", call[:end])


@dataclasses.dataclass
class _Instr:
    name: str
    type_text: str
    opcode: str
    call: str
    line: str


def _parse(text: str) -> tuple[dict[str, list[_Instr]], dict[str, str]]:
    computations: dict[str, list[_Instr]] = collections.defaultdict(list)
    types: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = header.group(1)
            continue
        m = _INSTR.match(line)
        if not m or not current:
            continue
        type_text, call = _split_type(m.group(2))
        opcode = call.partition("(")[0].strip()
        types[m.group(1)] = type_text
        computations[current].append(_Instr(m.group(1), type_text, opcode, call, line))
    return computations, types


def _trip_count(while_ins: _Instr, computations: dict[str, list[_Instr]]) -> int | None:
    """A while loop's trip count: XLA's ``known_trip_count`` when printed, else read from a
    condition ``i < N`` with N a constant, the form JAX lowers ``scan``/``fori_loop`` to (the
    counter starts at 0 and steps by 1). None when neither is there."""
    m = _TRIP.search(while_ins.line)
    if m:
        return int(m.group(1))
    cond = re.search(r"\bcondition=%?([\w.\-]+)", while_ins.line)
    instrs = computations.get(cond.group(1), []) if cond else []
    consts = {i.name: int(c.group(1)) for i in instrs if i.opcode == "constant"
              and re.match(r"[su]\d+\[\]", i.type_text)
              and (c := re.match(r"constant\((-?\d+)\)", i.call))}
    roots = [i for i in instrs if i.line.lstrip().startswith("ROOT")]
    if len(roots) == 1 and roots[0].opcode == "compare" and "direction=LT" in roots[0].line:
        bounds = [consts[n] for n in _operands(roots[0].call[len("compare"):]) if n in consts]
        if len(bounds) == 1 and bounds[0] > 0:
            return bounds[0]
    return None


def _multipliers(computations: dict[str, list[_Instr]], entry: str) -> tuple[dict[str, int], int]:
    """Times each computation runs per step (while bodies x known trip count)."""
    callees: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    unknown = 0
    for comp, instrs in computations.items():
        for ins in instrs:
            trip = 1
            if ins.opcode == "while":
                trip = _trip_count(ins, computations)
                unknown += trip is None
                trip = trip or 1
            for _, target in _CALLS.findall(ins.line):
                for callee in re.findall(r"%?([\w.\-]+)", target.strip("{}")):
                    callees[comp].append((callee, trip))
    times: dict[str, int] = collections.defaultdict(int)

    def visit(comp: str, n: int, depth: int) -> None:
        if depth > 64:
            return
        times[comp] += n
        for callee, trip in callees.get(comp, ()):
            visit(callee, n * trip, depth + 1)

    visit(entry, 1, 0)
    return times, unknown


def _entry_name(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("ENTRY"):
            m = _HEADER.match(line)
            if m:
                return m.group(1)
    return ""


def find_collectives(hlo_text: str) -> tuple[list[Collective], int]:
    """(the collectives of an HLO module as :class:`Collective` records, the number of while
    loops without a known trip count). See the module docstring for the counting rules."""
    computations, types = _parse(hlo_text)
    entry = _entry_name(hlo_text)
    times, unknown = _multipliers(computations, entry) if entry else ({}, 0)
    found: dict[tuple, Collective] = {}
    for comp, instrs in computations.items():
        for ins in instrs:
            kind = _OPCODES.get(ins.opcode)
            dcn = _MEGASCALE.search(ins.line) if ins.opcode == "send" else None
            if dcn:
                kind = "dcn:" + dcn.group(1).lower().replace("_", "-")
            if kind is None:
                continue
            if kind == "all-reduce" and comp.startswith("all-reduce-scatter"):
                kind = "reduce-scatter"
            operands = [b for name in _operands(ins.call[len(ins.opcode):])
                        for b in shape_bytes(types.get(name, ""))]
            results = shape_bytes(ins.type_text)
            if ins.opcode.endswith("-start") and ins.type_text.startswith("("):
                if results[:len(operands)] == operands:
                    results = results[len(operands):]
                scalars = re.findall(r"\b[us]32\[\]", ins.type_text)
                results = results[:len(results) - len(scalars)] if scalars else results
            size = sum(operands) if dcn else max(sum(operands), sum(results))
            m = _CHANNEL.search(ins.line)
            channel = int(m.group(1)) if m else None
            key = (kind, channel) if channel is not None else (kind, ins.name)
            n = times.get(comp, 0) or (0 if entry else 1)
            prev = found.get(key)
            if prev is None or (n, size) > (prev.times, prev.bytes):
                found[key] = Collective(kind, ins.name, comp, size, n, channel)
    return sorted(found.values(), key=lambda c: (c.kind, c.name)), unknown


def loop_trip_counts(hlo_text: str) -> list[int | None]:
    """Trip count of every ``while`` loop of the module (None where unknown)."""
    computations, _ = _parse(hlo_text)
    return [_trip_count(ins, computations) for instrs in computations.values() for ins in instrs
            if ins.opcode == "while"]


def custom_call_targets(hlo_text: str) -> dict[str, int]:
    """``{custom_call_target: number of custom-call instructions}`` (static counts)."""
    return dict(collections.Counter(re.findall(r'custom_call_target="([^"]+)"', hlo_text)))


def collective_summary(hlo_text: str) -> dict:
    """``{kind: {count, bytes, count_per_step, bytes_per_step}}`` for every kind in
    :data:`COLLECTIVE_KINDS` (zeros included), the same under ``"dcn"`` for collectives between
    slices, and ``unknown_trip_counts``."""
    ops, unknown = find_collectives(hlo_text)

    def rows() -> dict:
        return {k: {"count": 0, "bytes": 0, "count_per_step": 0, "bytes_per_step": 0}
                for k in COLLECTIVE_KINDS}

    summary, dcn = rows(), rows()
    for op in ops:
        table, kind = (dcn, op.kind[4:]) if op.kind.startswith("dcn:") else (summary, op.kind)
        row = table.setdefault(kind, {"count": 0, "bytes": 0, "count_per_step": 0,
                                      "bytes_per_step": 0})
        row["count"] += 1
        row["bytes"] += op.bytes
        row["count_per_step"] += op.times
        row["bytes_per_step"] += op.bytes * op.times
    summary["dcn"] = dcn
    summary["unknown_trip_counts"] = unknown
    return summary


__all__ = ["COLLECTIVE_KINDS", "Collective", "collective_summary", "custom_call_targets",
           "find_collectives", "loop_trip_counts", "shape_bytes"]
