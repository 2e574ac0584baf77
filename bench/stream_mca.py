"""Static throughput of the noise kernels' main loops on CPUs this machine is not.

The C++ stream has an AVX2 and an AVX-512 kernel; a machine runs and times only what it
has (and the AVX2 target, an AVX2-only Zen 3, is not the CI's CPU). This script takes the
main loop of each kernel out of the built extension (objdump), hands it to llvm-mca with
LLVM's scheduling model of several CPUs and prints cycles per normal and the normals/s
that would be at a given clock. It is a model's estimate, not a measurement: llvm-mca
assumes every load hits L1 and ignores the front end, so it bounds the loop from below.
Calibration (2026-12-01, Intel Xeon family 6 model 207 host): the project's old
auto-vectorised tile loop (7619583) comes out at 10.2 cycles/normal for znver3, against
12.2 measured on a Zen 3 for the whole call (shared/CPU-RNG.md); a hand AVX2 kernel of the
same design as today's was measured at 3.7 there.

    python bench/stream_mca.py [--cpu znver3 --cpu icelake-server ...] [--ghz 3.2] [--object F.o] [--kind update]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The kernels' main loops by their Out kind: 0 writes normals, 3 the fused update with y
# (stream_update: out = a x + b y + c z, loads of x and y inside the loop).
KINDS = {"normals": 0, "update": 3}
KERNEL_SYMBOL = re.compile(r"fastscore::stream_detail::\(anonymous namespace\)::run<\(.*Out\)0>\(")
NO_AVX512 = {"znver1", "znver2", "znver3", "haswell", "broadwell", "skylake", "alderlake"}
INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")


def functions(so: str, kind: str = "normals") -> dict[int, list[tuple[int, str, str]]]:
    """The `kind` kernels' instructions, by start address (one per ISA file)."""
    symbol = re.compile(KERNEL_SYMBOL.pattern.replace(r"Out\)0", rf"Out\){KINDS[kind]}"))
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", so], capture_output=True, text=True,
                         check=True).stdout
    found: dict[int, list[tuple[int, str, str]]] = {}
    current = None
    for line in dis.splitlines():
        head = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if head:
            current = int(head.group(1), 16) if symbol.search(head.group(2)) else None
            if current is not None:
                found[current] = []
            continue
        m = INSN.match(line)
        if current is not None and m:
            found[current].append((int(m.group(1), 16), m.group(2), re.sub(r"\s*[#<].*", "", m.group(3))))
    return found


def main_loop(insns: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The longest range closed by a backward conditional jump."""
    best: list[tuple[int, str, str]] = []
    for addr, op, arg in insns:
        if op.startswith("j") and op != "jmp" and re.match(r"[0-9a-f]+$", arg.split()[0] if arg else ""):
            target = int(arg.split()[0], 16)
            if target < addr:
                body = [i for i in insns if target <= i[0] <= addr]
                if len(body) > len(best):
                    best = body
    return best


def normals_per_iteration(loop: list[tuple[int, str, str]]) -> tuple[str, int]:
    """ISA and the float values stored to the output (stores not to the stack) per iteration."""
    width = {"%zmm": 16, "%ymm": 8, "%xmm": 4}
    isa = "avx512" if any("%zmm" in arg for _, _, arg in loop) else "avx2"
    values = 0
    for _, op, arg in loop:
        if op in ("vmovups", "vmovaps", "vmovdqu32", "vmovdqu64", "vmovdqa64", "vmovdqa32") and "," in arg:
            src, dst = arg.rsplit(",", 1)
            if "(" in dst and "%rsp" not in dst and "%rbp" not in dst:
                values += next(v for r, v in width.items() if r in src)
    return isa, values


def mca_cycles(loop: list[tuple[int, str, str]], cpu: str, iterations: int = 300) -> float | None:
    """Cycles per iteration in llvm-mca's model of `cpu` (None: this llvm-mca has no such model)."""
    text = "\n".join(f"{op} {arg}" for _, op, arg in loop if not op.startswith("j")) + "\n"
    proc = subprocess.run(["llvm-mca", f"-mcpu={cpu}", f"-iterations={iterations}"], input=text,
                          capture_output=True, text=True)
    found = re.search(r"Total Cycles:\s+(\d+)", proc.stdout)
    return int(found.group(1)) / iterations if proc.returncode == 0 and found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="append", help="llvm-mca -mcpu names (default: znver3, icelake-server)")
    ap.add_argument("--ghz", type=float, default=3.2, help="clock for the normals/s column (default 3.2)")
    ap.add_argument("--object", help="an object file to read instead of the extension (say, one stream_avx2.o)")
    ap.add_argument("--kind", choices=sorted(KINDS), default="normals",
                    help="normals (default) or update: the fused x + y + noise loop; per value either way")
    args = ap.parse_args()
    for tool in ("objdump", "llvm-mca"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (llvm-mca: Debian's llvm package)", file=sys.stderr)
            return 2
    if args.object:
        binary = args.object
    else:
        from fastscore.backends import _C

        binary = _C.__file__
    cpus = args.cpu or ["znver3", "icelake-server"]
    print(f"binary: {binary}")
    unit = "normal" if args.kind == "normals" else "value"
    print(f"{'kernel':8s} {'cpu model':16s} {'instr/iter':>10s} {unit + 's/iter':>12s} {'cycles/' + unit:>14s}"
          f" {'M %ss/s @ %.1f GHz' % (unit, args.ghz):>24s}")
    for insns in functions(binary, args.kind).values():
        loop = main_loop(insns)
        isa, normals = normals_per_iteration(loop)
        for cpu in cpus:
            if isa == "avx512" and cpu in NO_AVX512:
                continue
            per_iter = mca_cycles(loop, cpu)
            if per_iter is None:
                print(f"{isa:8s} {cpu:16s} (llvm-mca has no model of this CPU)")
                continue
            cyc = per_iter / normals
            print(f"{isa:8s} {cpu:16s} {len(loop):10d} {normals:12d} {cyc:14.2f} {args.ghz * 1e3 / cyc:24.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
