"""Count what a kernel's SASS (``nvdisasm -c`` text, ``-g`` for source lines) does: instructions by kind, in and out
of loops, per basic block, and every global load and store with its width, immediate offset and whether its address
is the same for all lanes.

A loop is the address range of a backward branch (``BRA`` to an earlier address); an instruction is "in the loop"
when any such range holds it; its depth is how many ranges hold it (2 inside a loop nested in a loop). A basic block
starts at the first instruction, at a label and after a branch or ``EXIT``; a block is *guarded* by a conditional
forward branch whose skipped range holds it, and the guard is named by that branch's source line (its text, from
the ``//## File "...", line N`` comments of ``nvdisasm -g``). Counts are static (per thread, per program);
:mod:`kernel_model.roofline` weights each block by the trips the launch implies, by a plan's expected runs
per trip of deeper loops, and by a plan's run frequency of the code a named guard skips (``guarded``).

Load batches: walking the code in order, the global loads issued before the first instruction that reads one of
their registers form one batch, one memory round trip a warp waits for (weighted by its block's runs).
"""

from __future__ import annotations

import dataclasses
import linecache
import re

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_SOURCE = re.compile(r'//## File "([^"]+)", line (\d+)')
_WIDTH = {"8": 1, "U8": 1, "S8": 1, "16": 2, "U16": 2, "S16": 2, "64": 8, "128": 16}
_MEMORY = re.compile(r"\[(U?R\w+)(?:\.64)?(?:\+(-?0x[0-9a-f]+|-?\d+))?\]")
_REGISTER = re.compile(r"\bR(\d+)\b")

KINDS = ("total", "ffma", "fp", "int", "global_load", "global_store", "local", "shared", "barrier", "shuffle",
         "control", "mma")


def _kind(opcode: str) -> str:
    base = opcode.split(".")[0]
    if base in ("FFMA", "FFMA32I", "DFMA", "HFMA2"):
        return "ffma"
    if base in ("HMMA", "DMMA", "HGMMA", "IMMA", "QGMMA"):  # tensor-core matrix products (tl.dot)
        return "mma"
    if base in ("LDG",):
        return "global_load"
    if base in ("STG", "RED", "ATOMG"):
        return "global_store"
    if base in ("LDL", "STL"):
        return "local"
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
class Row:
    """One instruction: address, predicate (``""`` when none), opcode, operands, source line text (or ``""``)."""

    address: int
    predicate: str
    opcode: str
    operands: str
    source: str = ""


@dataclasses.dataclass
class SassCounts:
    """Static instruction counts outside (``straight``) and inside (``loop``) loops, by kind (``KINDS``), the parts
    of ``loop`` at depth 2, 3, ... (``nested["2"]``), ``memory``: one ``[kind, bytes_per_lane, immediate_offset,
    uniform, depth, address]`` per global load/store and local (spill) access, ``blocks``: one ``{"start", "depth",
    "guards", "counts"}`` per basic block (``guards``: the source texts of the branches that skip it), and
    ``batches``: ``[address, depth, uniform]`` of each load batch (a memory round trip a warp waits for)."""

    straight: dict
    loop: dict
    memory: list
    nested: dict = dataclasses.field(default_factory=dict)
    blocks: list = dataclasses.field(default_factory=list)
    batches: list = dataclasses.field(default_factory=list)

    @staticmethod
    def weight(depth: int, runs: dict[int, float] | None) -> float:
        """Runs per trip of code ``depth`` loops deep (1 at depth 1; deeper: ``runs[d]`` or the nearest shallower
        given, else 1)."""
        weight = 1.0
        for level in range(2, int(depth) + 1):
            weight = (runs or {}).get(level, weight)
        return weight

    def _runs(self, depth: int, guards: list, trips: float, runs, guarded) -> float:
        weight = trips * self.weight(depth, runs) if depth else 1.0
        for guard in guards:
            weight *= (guarded or {}).get(guard, 1.0)
        return weight

    def count(self, kind: str, trips: float = 1.0, runs: dict[int, float] | None = None,
              guarded: dict[str, float] | None = None) -> float:
        """Dynamic count of ``kind`` per thread when the loop body runs ``trips`` times, the code at depth ``d``
        ``runs[d]`` times per trip (a depth not in ``runs`` takes the nearest shallower one's; without ``runs``
        every depth runs once per trip), and the code a branch on source line ``text`` skips ``guarded[text]``
        times per run of the code around it (per basic block)."""
        if self.blocks:
            return sum(self._runs(b["depth"], b["guards"], trips, runs, guarded) * b["counts"].get(kind, 0)
                       for b in self.blocks)
        loop = self.loop.get(kind, 0)
        for depth, counts in self.nested.items():
            loop += (self.weight(int(depth), runs) - 1.0) * counts.get(kind, 0)
        return self.straight.get(kind, 0) + trips * loop

    def runs_at(self, address: int, depth: int, trips: float, runs=None, guarded=None) -> float:
        """Dynamic runs per thread of the instruction at ``address`` (``depth`` loops deep)."""
        guards = next((b["guards"] for b in reversed(self.blocks) if b["start"] <= address), [])
        return self._runs(depth, guards, trips, runs, guarded)

    def round_trips(self, trips: float, runs=None, guarded=None, prefetch: int = 1,
                    uniform: bool | None = None) -> float:
        """Memory round trips per thread: each load batch weighted by its runs, those in loops over ``prefetch``
        (the batches a software-pipelined loop keeps in flight); only the uniform (or only the other) batches when
        ``uniform`` is given."""
        return sum(self.runs_at(address, depth, trips, runs, guarded) / (max(prefetch, 1) if depth else 1)
                   for address, depth, shared in self.batches if uniform is None or shared == uniform)

    def guards(self) -> set[str]:
        """Source texts of every guarding branch (what a plan's ``guarded`` may name)."""
        return {guard for block in self.blocks for guard in block["guards"]}


def _parse(text: str, source=None) -> tuple[list[Row], dict[str, int]]:
    """The instructions and the address of each label; ``source(path, line)`` gives a line's text (default: read
    from the file named by ``nvdisasm -g``)."""
    source = source or (lambda path, line: linecache.getline(path, line))
    rows, labels, pending, where = [], {}, [], ""
    for line in text.splitlines():
        match = _LINE.search(line)
        found = _SOURCE.search(line)
        if found:
            where = source(found.group(1), int(found.group(2))).strip()
        elif match:
            address = int(match.group(1), 16)
            labels.update(dict.fromkeys(pending, address))
            pending = []
            rows.append(Row(address, (match.group(2) or "").strip(), match.group(3), match.group(4).strip(), where))
        elif re.match(r"^\.L\w+:", line.strip()):
            pending.append(line.strip()[:-1])
    return rows, labels


def _target(row: Row, labels: dict[str, int]) -> int | None:
    label = re.search(r"\((\.L\w+)\)", row.operands)
    if label and label.group(1) in labels:
        return labels[label.group(1)]
    number = re.search(r"0x([0-9a-f]+)", row.operands)
    return int(number.group(1), 16) if number else None


def _loops(rows: list[Row], labels) -> list[tuple[int, int]]:
    spans = []
    for row in rows:
        if row.opcode.startswith("BRA"):
            target = _target(row, labels)
            if target is not None and target <= row.address:
                spans.append((target, row.address))
    return spans


def basic_blocks(rows: list[Row], labels: dict[str, int]) -> list[dict]:
    """Split ``rows`` into basic blocks: ``{"start", "end", "rows", "successors"}`` in address order (``end``: the
    last instruction's address; ``successors``: the addresses control may go to next)."""
    starts = {rows[0].address} if rows else set()
    starts.update(address for address in labels.values())
    for row, after in zip(rows, rows[1:]):
        if row.opcode.startswith(("BRA", "EXIT", "RET")):
            starts.add(after.address)
    blocks: list[dict] = []
    for row in rows:
        if row.address in starts or not blocks:
            blocks.append({"start": row.address, "end": row.address, "rows": [], "successors": []})
        blocks[-1]["rows"].append(row)
        blocks[-1]["end"] = row.address
    for block, following in zip(blocks, blocks[1:] + [None]):
        last = block["rows"][-1]
        if last.opcode.startswith("BRA"):
            target = _target(last, labels)
            block["successors"] = [] if target is None else [target]
        if following is not None and not (last.opcode.startswith(("BRA", "EXIT", "RET")) and not last.predicate):
            block["successors"].append(following["start"])
    return blocks


def _guards(rows: list[Row], labels) -> list[tuple[int, int, str]]:
    """``(branch address, target, source text)`` of each conditional forward branch."""
    return [(row.address, target, row.source) for row in rows
            if row.opcode.startswith("BRA") and row.predicate
            and (target := _target(row, labels)) is not None and target > row.address]


def _width(opcode: str) -> int:
    for part in opcode.split(".")[1:]:
        if part in _WIDTH:
            return _WIDTH[part]
    return 4


def _registers(operands: str, width: int = 4) -> set[int]:
    """The 32-bit registers named (a load's destination ``R8`` of 16 bytes: R8-R11)."""
    found = set()
    for number in _REGISTER.findall(operands):
        found.update(range(int(number), int(number) + max(1, width // 4)))
    return found


def _batches(rows: list[Row], depth_of, uniform: set[int]) -> list[list]:
    """``[address of its first load, depth, uniform]`` of each load batch: walking the code in address order, the
    global loads issued before an instruction reads one of their registers (asynchronous copies, ``LDGSTS``: before
    the ``DEPBAR`` that waits for them), closed also where the loop depth changes; ``uniform`` when each of its
    loads has one address for all lanes (addresses in ``uniform``: parameters every program reads, cached)."""
    batches, pending, first, depth, shared = [], set(), 0, 0, True
    for row in rows:
        here = depth_of(row.address)
        if pending and here != depth:
            batches.append([first, depth, shared])
            pending = set()
        depth = here
        head, _, rest = row.operands.partition(",")
        kind = _kind(row.opcode)
        sources = _registers(row.operands if kind in ("global_store", "local") or "[" in head else rest)
        if row.opcode.startswith("DEPBAR"):
            sources.add(-1)
        if pending and sources & pending:
            batches.append([first, depth, shared])
            pending = set()
        if kind == "global_load" or row.opcode.startswith("LDGSTS"):
            first, shared = (row.address, True) if not pending else (first, shared)
            shared = shared and row.address in uniform
            pending |= {-1} if row.opcode.startswith("LDGSTS") else _registers(head, _width(row.opcode))
    if pending:
        batches.append([first, depth, shared])
    return batches


def count_sass(text: str, source=None) -> SassCounts:
    rows, labels = _parse(text, source)
    spans = [(lo, hi) for lo, hi in _loops(rows, labels) if lo < hi]
    padding = {(lo, hi) for lo, hi in _loops(rows, labels) if lo == hi}
    guards = _guards(rows, labels)

    def depth_of(address: int) -> int:
        return sum(lo <= address <= hi for lo, hi in spans)

    straight = dict.fromkeys(KINDS, 0)
    loop = dict.fromkeys(KINDS, 0)
    nested: dict[str, dict] = {}
    memory = []
    uniform: set[str] = set()  # registers holding a value every lane shares (from the constant bank)
    blocks = []
    for block in basic_blocks(rows, labels):
        counts = dict.fromkeys(KINDS, 0)
        blocks.append({"start": block["start"], "depth": depth_of(block["start"]), "counts": counts,
                       "guards": [text for at, target, text in guards if at < block["start"] < target]})
        for row in block["rows"]:
            address, opcode, operands = row.address, row.opcode, row.operands
            depth = depth_of(address)
            kind = _kind(opcode)
            if opcode == "NOP" or (address, address) in padding:
                continue  # the self-branch and padding after EXIT
            counts["total"] += 1
            counts[kind] += 1
            region = loop if depth > 0 else straight
            region["total"] += 1
            region[kind] += 1
            if depth > 1:
                counts_at = nested.setdefault(str(depth), dict.fromkeys(KINDS, 0))
                counts_at["total"] += 1
                counts_at[kind] += 1
            destination = operands.split(",")[0].strip()
            if kind in ("global_load", "global_store", "local"):
                found = _MEMORY.search(re.sub(r"desc\[[^\]]*\]", "", operands))
                offset = found.group(2) if found else None
                base, value = (found.group(1) if found else ""), int(offset or "0", 16 if "x" in (offset or "") else 10)
                name = ("local_store" if opcode.startswith("STL") else "local_load") if kind == "local" else kind
                memory.append([name, _width(opcode), value, kind != "local" and (base.startswith("UR") or base in uniform),
                               depth, address])
            if opcode.startswith(("LDC", "ULDC")) or (opcode.startswith(("MOV", "IMAD.U32")) and "UR" in operands
                                                       and "R" == destination[:1]):
                registers = [destination]
                if ".64" in opcode and destination.startswith("R") and destination[1:].isdigit():
                    registers.append(f"R{int(destination[1:]) + 1}")
                uniform.update(registers)
            elif destination in uniform and kind not in ("global_store", "control"):
                uniform.discard(destination)
    uniform_loads = {entry[5] for entry in memory if entry[0] == "global_load" and entry[3]}
    return SassCounts(straight, loop, memory, nested, blocks, _batches(rows, depth_of, uniform_loads))
