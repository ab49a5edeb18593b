"""The host record every bench result carries (which vector extensions, int8 dot product or not) and the page
cache eviction that makes RSS figures comparable across hosts.

Why a test: the int8 figures of `make bench` are read against this record (docs/measurements.md: int8 ran at
float32's speed on a host without VNNI), so a parser that silently missed a flag would mislabel every result; and
an eviction that silently did nothing would let a freshly installed host report 50 MB more RSS.
"""

from pathlib import Path

import numpy as np
import pytest

from bench.machine import cpu_line, cpu_summary, evict_from_page_cache, machine_record, simd_flags

X86_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 bmi1 bmi2
processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 bmi1 bmi2
"""
X86_VNNI = X86_AVX2.replace("bmi2", "bmi2 avx512f avx512_vnni avx512_bf16")
ARM_DOT = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def test_simd_flags_read_x86_and_arm_cpuinfo_in_a_fixed_order():
    assert simd_flags(X86_AVX2) == ["avx2", "fma"]
    assert simd_flags(X86_VNNI) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert simd_flags(ARM_DOT) == ["asimd", "asimddp"]  # asimdhp, asimdrdm are not asimddp
    assert simd_flags("") == []


def test_cpu_summary_says_whether_int8_has_a_dot_product(tmp_path):
    for text, model, dot in (
        (X86_AVX2, "AMD EPYC", False),
        (X86_VNNI, "AMD EPYC", True),
        (ARM_DOT, None, True),
    ):
        f = tmp_path / "cpuinfo"
        f.write_text(text)
        s = cpu_summary(f)
        assert s["int8_dot"] is dot and s["simd"] == simd_flags(text)
        if model:
            assert s["model"] == model
    assert "NO" in cpu_line({"cpu": cpu_summary(_write(tmp_path, X86_AVX2))})
    assert "int8 dot product: yes" in cpu_line({"cpu": cpu_summary(_write(tmp_path, ARM_DOT))})
    missing = cpu_summary(tmp_path / "absent")
    assert missing["simd"] == "unknown" and missing["int8_dot"] == "unknown"
    assert "unknown" in cpu_line({"cpu": missing})
    rec = machine_record()
    assert {"cpus", "python", "platform", "cpu", "loadavg_start"} <= set(rec)


def _write(tmp_path, text: str):
    f = tmp_path / "cpuinfo2"
    f.write_text(text)
    return f


def _resident_pages(path) -> int:
    """Pages of `path` in the page cache: mincore(2) over a private mapping (nothing is read by asking)."""
    import ctypes
    import mmap

    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        view = ctypes.c_char.from_buffer(m)
        vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
        rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vec)
        del view
        m.close()
    assert rc == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec)


def _fs_type(path) -> str:
    mounts = [ln.split()[1:3] for ln in Path("/proc/mounts").read_text().splitlines()]
    return max((m for m in mounts if str(path).startswith(m[0])), key=lambda m: len(m[0]))[1]


def test_eviction_drops_the_cached_pages_of_libraries_and_models_only(tmp_path):
    if _fs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("on tmpfs the page cache is the file's only copy: nothing can be evicted")
    lib, model, other = (
        tmp_path / "lib" / "libx.so.1",
        tmp_path / "m" / "model.tflite",
        tmp_path / "notes.txt",
    )
    for p in (lib, model, other):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(np.random.default_rng(0).bytes(1 << 20))
        p.read_bytes()  # written and read: in the page cache
    assert _resident_pages(other) > 0
    assert evict_from_page_cache(tmp_path) == 2
    assert _resident_pages(lib) == 0 and _resident_pages(model) == 0
    assert _resident_pages(other) > 0
