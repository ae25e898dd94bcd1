"""cpu_info: the CPU's name, microarchitecture and kernel-deciding flags from /proc/cpuinfo."""

from __future__ import annotations

from fpncli.runtime.cpu import cpu_info, describe_cpu

ZEN5 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    "stepping\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 avx512_vp2intersect\n\n"
    "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    "stepping\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 avx512_vp2intersect\n"
)
ARM = (
    "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes crc32\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd0c\n"
)


def test_x86_name_family_model_and_flags():
    info = cpu_info(ZEN5)
    assert info["model"] == "AMD EPYC"
    assert info["id"] == "family 26 model 2 stepping 1"
    # Only the flags that decide kernels, in a fixed order; the rest are left out.
    assert info["flags"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert info["cores"] >= 1
    assert describe_cpu(info) == "AMD EPYC (family 26 model 2 stepping 1)"


def test_same_name_and_flags_but_another_family_is_another_cpu():
    zen4 = ZEN5.replace("cpu family\t: 26", "cpu family\t: 25").replace("model\t\t: 2", "model\t\t: 17")
    assert cpu_info(zen4)["model"] == cpu_info(ZEN5)["model"]
    assert cpu_info(zen4)["flags"] == cpu_info(ZEN5)["flags"]
    assert describe_cpu(cpu_info(zen4)) != describe_cpu(cpu_info(ZEN5))


def test_arm_implementer_and_part():
    info = cpu_info(ARM)
    assert info["id"] == "implementer 0x41 part 0xd0c variant 0x1"
    assert info["flags"] == ["asimd"]
    assert info["model"]  # no "model name" line: the platform's name stands in


def test_nothing_readable_still_names_a_cpu():
    info = cpu_info("")
    assert info["model"] and info["id"] == "" and info["flags"] == []
    assert describe_cpu(info) == info["model"]


def test_the_probe_cache_key_carries_the_microarchitecture(monkeypatch):
    from fpncli.inference import probe

    monkeypatch.setattr(probe, "cpu_info", lambda: cpu_info(ZEN5))
    zen5 = probe.machine_key()
    zen4 = ZEN5.replace("cpu family\t: 26", "cpu family\t: 25")
    monkeypatch.setattr(probe, "cpu_info", lambda: cpu_info(zen4))
    assert "family 26 model 2" in zen5 and probe.machine_key() != zen5


def test_big_little_names_the_cores_this_process_runs_on():
    def core(n: int, part: str) -> str:
        return (
            f"processor\t: {n}\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
            f"CPU variant\t: 0x2\nCPU part\t: {part}\n\n"
        )

    text = core(0, "0xd05") + core(1, "0xd05") + core(2, "0xd0b") + core(3, "0xd0b") + "Model\t: Some Board\n"
    little, big = (cpu_info(text, allowed=cores)["id"] for cores in ({0, 1}, {2, 3}))
    assert little == "implementer 0x41 part 0xd05 variant 0x2"
    assert big == "implementer 0x41 part 0xd0b variant 0x2"
    assert cpu_info(text, allowed={0, 1, 2, 3})["id"] == f"{little} + {big}"
    assert cpu_info(text, allowed={0})["model"] == "Some Board"  # the board's line, outside the cores
