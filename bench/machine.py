"""What a benchmark's host can do for int8: the CPU's vector extensions, recorded beside every result.

Why: each session runs on another host of the same kind, and the int8 figures hinge on one thing the clock
speed does not show. With AVX512-VNNI (or AVX-VNNI, or ARM's dot-product instructions) XNNPACK's int8 kernels
ran the reference conv at 3.7x float32's rate; on an AVX2-only host they ran it at float32's rate, and the default
bundle's crop took 50 ms instead of 16 (docs/measurements.md, the sixth 2026-11-29 machine). A result file that
names the extensions says which of the two it is.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from pathlib import Path

# flags in /proc/cpuinfo that decide how fast int8 (and float) inference runs, in the order they are reported
# (bfloat16 ones for the training bench's mixed-precision run)
SIMD_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16",
    "asimd", "asimddp", "i8mm", "bf16",
)  # fmt: skip
# any of these gives XNNPACK an int8 dot product (8-bit multiplies summed into 32 bits in one instruction)
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def simd_flags(cpuinfo: str) -> list[str]:
    """The SIMD_FLAGS a /proc/cpuinfo text lists (x86 `flags`, ARM `Features`), in SIMD_FLAGS order."""
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            found.update(value.split())
    return [f for f in SIMD_FLAGS if f in found]


def cpu_summary(cpuinfo_path: str | Path = "/proc/cpuinfo") -> dict:
    """{"model", "simd", "int8_dot"} of this host; "unknown" fields where /proc/cpuinfo cannot be read."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        return {"model": platform.processor() or "unknown", "simd": "unknown", "int8_dot": "unknown"}
    model = next(
        (ln.partition(":")[2].strip() for ln in text.splitlines() if ln.lower().startswith("model name")),
        platform.processor() or "unknown",
    )
    flags = simd_flags(text)
    return {"model": model, "simd": flags, "int8_dot": any(f in INT8_DOT for f in flags)}


def machine_record() -> dict:
    """The `machine` block of a bench result: cores, Python, platform, CPU extensions, load at the start."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_summary(),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],  # other work on the machine: noise
    }


def cpu_line(record: dict) -> str:
    """One line for a bench's printed table: which CPU, and whether int8 has a dot product on it."""
    cpu = record.get("cpu") or {}
    simd = cpu.get("simd")
    flags = " ".join(simd) if isinstance(simd, list) else str(simd)
    dot = cpu.get("int8_dot")
    verdict = {True: "int8 dot product: yes", False: "int8 dot product: NO (int8 runs near float32's speed)"}
    said = verdict.get(dot, "int8 dot product: unknown")
    return f"CPU: {cpu.get('model', 'unknown')}; {flags or 'no listed SIMD'}; {said}"


def evict_from_page_cache(*roots: str | Path) -> int:
    """Drop the cached pages of the shared libraries and model files under `roots`; the number of files.

    Why: a process's RSS counts every page of a mapped large folio, and files written recently (a fresh
    `pip install`, a new bundle) sit in the page cache as large folios, while files read back after a reboot do
    not. The daemon's peak RSS was 170.8 MB on a freshly installed host and 118.6 MB once the cache was dropped,
    its anonymous memory 59.0 MB both times (docs/measurements.md, the first 2026-11-30 machine). Evicting
    these files before a run measures what a device shows after a reboot, on any host. Pages another process
    has mapped stay (the kernel keeps them), and so do dirty ones, hence the sync first; nothing needs root.
    """
    os.sync()
    n = 0
    for root in roots:
        for p in Path(root).rglob("*"):
            if not (".so" in p.suffixes or p.suffix in (".tflite", ".npz")) or not p.is_file():
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def library_roots() -> list[str]:
    """The running interpreter's site-packages folders: where OpenCV, LiteRT and numpy's libraries live."""
    return sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
