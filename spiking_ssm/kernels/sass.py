"""Count what a kernel's SASS (``nvdisasm -c`` text) does: instructions by kind, in and out of loops, and every
global load and store with its width, immediate offset and whether its address is the same for all lanes.

A loop is the address range of a backward branch (``BRA`` to an earlier address); an instruction is "in the loop"
when any such range holds it; its depth is how many ranges hold it (2 inside a loop nested in a loop). Counts are
static (per thread, per program); :mod:`spiking_ssm.kernels.roofline` weights the loop part by the trip count the
launch implies, and the deeper parts, where a plan gives them, by their own expected runs per trip.
"""

from __future__ import annotations

import dataclasses
import re

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_WIDTH = {"8": 1, "U8": 1, "S8": 1, "16": 2, "U16": 2, "S16": 2, "64": 8, "128": 16}
_MEMORY = re.compile(r"\[(U?R\w+)(?:\.64)?(?:\+(-?0x[0-9a-f]+|-?\d+))?\]")

KINDS = ("total", "ffma", "fp", "int", "global_load", "global_store", "shared", "barrier", "shuffle", "control")


def _kind(opcode: str) -> str:
    base = opcode.split(".")[0]
    if base in ("FFMA", "FFMA32I", "DFMA", "HFMA2"):
        return "ffma"
    if base in ("LDG",):
        return "global_load"
    if base in ("STG", "RED", "ATOMG"):
        return "global_store"
    if base in ("LDS", "STS", "LDSM", "LDGSTS", "ATOMS"):
        return "shared"
    if base in ("BAR", "SYNCS", "MEMBAR"):
        return "barrier"
    if base in ("SHFL",):
        return "shuffle"
    if base in ("BRA", "EXIT", "BSSY", "BSYNC", "WARPSYNC", "RET", "CALL", "NOP"):
        return "control"
    if base[0] in "FDH" or base in ("MUFU", "FRND"):
        return "fp"
    return "int"


@dataclasses.dataclass
class SassCounts:
    """Static instruction counts outside (``straight``) and inside (``loop``) loops, by kind (``KINDS``), the parts
    of ``loop`` at depth 2, 3, ... (``nested["2"]``: inside a loop nested in a loop), and ``memory``: one ``[kind,
    bytes_per_lane, immediate_offset, uniform, depth]`` per global load/store (depth 0: straight code; older
    cached counts hold a bool there, in a loop or not)."""

    straight: dict
    loop: dict
    memory: list
    nested: dict = dataclasses.field(default_factory=dict)

    @staticmethod
    def weight(depth: int, runs: dict[int, float] | None) -> float:
        """Runs per trip of code ``depth`` loops deep (1 at depth 1; deeper: ``runs[d]`` or the nearest shallower
        given, else 1)."""
        weight = 1.0
        for level in range(2, int(depth) + 1):
            weight = (runs or {}).get(level, weight)
        return weight

    def count(self, kind: str, trips: float = 1.0, runs: dict[int, float] | None = None) -> float:
        """Dynamic count of ``kind`` per thread when the loop body runs ``trips`` times and, with ``runs``, the
        code at depth ``d`` runs ``runs[d]`` times per trip (a depth not in ``runs`` takes the nearest shallower
        one's; without ``runs`` every depth runs once per trip, as the outer body)."""
        loop = self.loop.get(kind, 0)
        for depth, counts in self.nested.items():
            loop += (self.weight(int(depth), runs) - 1.0) * counts.get(kind, 0)
        return self.straight.get(kind, 0) + trips * loop


def _parse(text: str) -> tuple[list[tuple[int, str, str]], dict[str, int]]:
    """The instructions ``(address, opcode, operands)`` and the address of each label."""
    rows, labels, pending = [], {}, []
    for line in text.splitlines():
        match = _LINE.search(line)
        if match:
            address = int(match.group(1), 16)
            labels.update(dict.fromkeys(pending, address))
            pending = []
            rows.append((address, match.group(3), match.group(4).strip()))
        elif re.match(r"^\.L\w+:", line.strip()):
            pending.append(line.strip()[:-1])
    return rows, labels


def _loops(rows, labels) -> list[tuple[int, int]]:
    spans = []
    for address, opcode, operands in rows:
        if opcode.startswith("BRA"):
            label = re.search(r"\((\.L\w+)\)", operands)
            target = labels.get(label.group(1)) if label else None
            if target is None:
                number = re.search(r"0x([0-9a-f]+)", operands)
                target = int(number.group(1), 16) if number else None
            if target is not None and target <= address:
                spans.append((target, address))
    return spans


def _width(opcode: str) -> int:
    for part in opcode.split(".")[1:]:
        if part in _WIDTH:
            return _WIDTH[part]
    return 4


def count_sass(text: str) -> SassCounts:
    rows, labels = _parse(text)
    spans = _loops(rows, labels)
    straight = dict.fromkeys(KINDS, 0)
    loop = dict.fromkeys(KINDS, 0)
    nested: dict[str, dict] = {}
    memory = []
    uniform: set[str] = set()  # registers holding a value every lane shares (from the constant bank)
    for address, opcode, operands in rows:
        depth = sum(lo <= address <= hi for lo, hi in spans if lo < hi)
        in_loop = depth > 0
        kind = _kind(opcode)
        if opcode == "NOP" or (address, address) in spans:
            continue  # the self-branch and padding after EXIT
        counts = loop if in_loop else straight
        counts["total"] += 1
        counts[kind] += 1
        if depth > 1:
            counts_at = nested.setdefault(str(depth), dict.fromkeys(KINDS, 0))
            counts_at["total"] += 1
            counts_at[kind] += 1
        destination = operands.split(",")[0].strip()
        if kind in ("global_load", "global_store"):
            found = _MEMORY.search(re.sub(r"desc\[[^\]]*\]", "", operands))
            base, offset = (found.group(1), int(found.group(2) or "0", 16 if "x" in (found.group(2) or "") else 10)) \
                if found else ("", 0)
            memory.append([kind, _width(opcode), offset, base.startswith("UR") or base in uniform, depth])
        if opcode.startswith(("LDC", "ULDC")) or (opcode.startswith(("MOV", "IMAD.U32")) and "UR" in operands
                                                   and "R" == destination[:1]):
            registers = [destination]
            if ".64" in opcode and destination.startswith("R") and destination[1:].isdigit():
                registers.append(f"R{int(destination[1:]) + 1}")
            uniform.update(registers)
        elif destination in uniform and kind not in ("global_store", "control"):
            uniform.discard(destination)
    return SassCounts(straight, loop, memory, nested)
