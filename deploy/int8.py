"""The int8 variants an artifact can ship, and the kernel preset a device's ISA runs fastest.

Pure data and arithmetic, torch-free: the profile validator (on the device) and the exporter
(on the build machine) read the same names. The exporter maps a variant onto onnxruntime's
quantiser; the preset is optimum's ``AutoQuantizationConfig`` name for the weight and
activation types that suit the ISA (research notes: x86 without VNNI must keep u8 weights to
avoid the u8×s8 saturation of AVX2's ``vpmaddubsw``; VNNI, AVX-512 and Arm take s8 weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from deploy.errors import InputError


@dataclass(frozen=True)
class Int8Variant:
    """One way of quantising the encoder's weights and activations to int8."""

    name: str
    static: bool          # activation ranges calibrated offline (needs calibration inputs)
    per_channel: bool     # one weight scale per output column
    summary: str
    operators: tuple[str, ...] = ()   # onnxruntime operators its graphs need beyond fp32's
    mixed: bool = False   # the matmuls whose int8 error on task inputs is largest stay fp32
    smooth: float = 0.0   # SmoothQuant migration strength α before quantising (0: none)
    # several α: the exporter quantises each and ships the one whose file follows fp32 best on
    # held-out training inputs (where it has them; else ``smooth``)
    smooth_choices: tuple[float, ...] = ()

    @property
    def calibrated(self) -> bool:
        """Whether making the variant needs calibration inputs (static ranges, mixed's probes, or the
        activation maxima smoothing divides by)."""
        return self.static or self.mixed or self.smooth > 0

    @property
    def weighted_ops(self) -> tuple[str, ...]:
        """The operators whose weights it stores int8 (embedding tables apart): static QDQ leaves the
        fused attention fp32, the dynamic variants quantise it (QAttention)."""
        return STATIC_OPS if self.static else DYNAMIC_OPS


DYNAMIC_OPS = ("MatMul", "Attention")  # the weighted operators the dynamic variants quantise
STATIC_OPS = ("MatMul",)               # static QDQ's (no QDQ form of the fused attention here)


INT8_VARIANTS = {v.name: v for v in (
    Int8Variant("dynamic", False, False,
                "dynamic: int8 weights (one scale per tensor), activations quantised at run time; "
                "fused attention as QAttention",
                ("DynamicQuantizeLinear", "MatMulInteger", "QAttention", "QEmbedLayerNormalization")),
    Int8Variant("dynamic-per-channel", False, True,
                "dynamic with one weight scale per output column: less error on uneven trimmed layers",
                ("DynamicQuantizeLinear", "MatMulInteger", "QAttention", "QEmbedLayerNormalization")),
    Int8Variant("mixed", False, True,
                "dynamic-per-channel with the few matmuls whose int8 error on task inputs is largest kept "
                "fp32, within a latency allowance (sensitivity-guided mixed precision), where that follows fp32 "
                "better than plain per-channel on other training inputs",
                ("DynamicQuantizeLinear", "MatMulInteger", "QAttention", "QEmbedLayerNormalization"), mixed=True),
    Int8Variant("static-qdq", True, True,
                "static QDQ: weights and MatMul activations int8 from calibrated ranges, the format "
                "NPU and mobile runtimes (XNNPACK, QNN, TensorRT) accept; the fused attention stays fp32",
                ("QuantizeLinear", "DequantizeLinear", "QEmbedLayerNormalization")),
    Int8Variant("static-smooth", True, True,
                "static QDQ after SmoothQuant scale migration (α 0.5): each weighted MatMul's input divided "
                "per channel by a calibrated scale the weight takes on, so a few loud channels no longer "
                "stretch the activation's one int8 range",
                ("QuantizeLinear", "DequantizeLinear", "QEmbedLayerNormalization"), smooth=0.5),
    # α 0.9, not static's 0.5: chosen on validation inputs (bench/int8_accuracy.py --alphas); the export
    # then chooses per model among the sweep's best (--alpha-choice measured it on dev; docs/accuracy.md)
    Int8Variant("dynamic-smooth", False, True,
                "dynamic-per-channel after SmoothQuant scale migration of every quantised input, the fused "
                "attention's included: the run-time range of each activation no longer stretched by a few loud "
                "channels (one fp32 Mul per smoothed tensor); α chosen per model among 0.9, 0.65, 0.8 and 1 on "
                "held-out training inputs",
                ("DynamicQuantizeLinear", "MatMulInteger", "QAttention", "QEmbedLayerNormalization"), smooth=0.9,
                smooth_choices=(0.9, 0.65, 0.8, 1.0)),
    Int8Variant("mixed-smooth", False, True,
                "mixed on the graph dynamic-smooth quantises: its probes, its fp32 nodes and its check against "
                "dynamic-smooth on other training inputs",
                ("DynamicQuantizeLinear", "MatMulInteger", "QAttention", "QEmbedLayerNormalization"), mixed=True,
                smooth=0.9),
)}
# chosen by bench/int8_accuracy.py (docs/accuracy.md): the most validation agreement with fp32 of the
# candidates whose shipped file stays within 5% of the former default's (mixed) latency on every task
DEFAULT_VARIANT = "dynamic-smooth"
UNCALIBRATED_VARIANT = "dynamic-per-channel"  # the default where no calibration inputs are at hand


def default_variant(calibrated: bool) -> str:
    """Return the variant used when neither a flag nor the profile names one: dynamic-smooth
    where calibration inputs are at hand (``sensibert run`` has the training split), else
    dynamic-per-channel, which needs none."""
    return DEFAULT_VARIANT if calibrated else UNCALIBRATED_VARIANT
PRESETS = ("arm64", "avx2", "avx512", "avx512_vnni")
DEFAULT_PRESET = "avx2"     # no device known: u8 weights run correctly on every x86-64 with AVX2
_X86 = ("x86_64", "amd64", "x86")


def get_variant(name: str) -> Int8Variant:
    """Return the registered variant ``name``; anything else is one line naming the alternatives."""
    try:
        return INT8_VARIANTS[name]
    except KeyError:
        raise InputError(f"unknown int8 variant {name!r}; choose one of: {', '.join(INT8_VARIANTS)}") from None


def unsigned_weights(preset: str) -> bool:
    """Whether ``preset`` stores uint8 weights (x86 without VNNI, optimum's avx2) rather than int8."""
    return preset == "avx2"


def preset_for(isa: Optional[str], features: Iterable[str] = ()) -> str:
    """Return the quantisation preset for a CPU: arm64 on Arm; on x86 avx512_vnni where VNNI
    (AVX-512 or AVX) is present, avx512 with AVX-512F, else avx2; ``DEFAULT_PRESET`` if unknown."""
    feats = {f.lower() for f in features}
    isa = (isa or "").lower()
    if isa in ("arm64", "aarch64", "armv8", "armv9"):
        return "arm64"
    if isa in _X86:
        if feats & {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"}:
            return "avx512_vnni"
        if "avx512f" in feats:
            return "avx512"
        return "avx2"
    return DEFAULT_PRESET


def check_preset(preset: str, isa: Optional[str], features: Iterable[str] = ()) -> None:
    """Refuse a preset the device cannot run well: an x86 preset on Arm or the reverse, or
    AVX-512 kernels on a CPU whose features lack AVX-512F (one line naming what fits)."""
    if preset not in PRESETS:
        raise InputError(f"unknown int8 preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if not isa:
        return
    fits = preset_for(isa, features)
    arm = fits == "arm64"
    feats = {f.lower() for f in features}
    if (preset == "arm64") != arm or (preset == "avx512" and "avx512f" not in feats) or \
            (preset == "avx512_vnni" and fits != "avx512_vnni"):
        raise InputError(f"int8 preset {preset} does not suit the profile's CPU (isa {isa}, features "
                         f"{', '.join(sorted(feats)) or 'none'}); use {fits}, or leave the preset to the profile")


def runtime_operators() -> frozenset:
    """Return the operator names the installed onnxruntime registers (contrib ops included)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    return frozenset(schema.name for schema in C.get_all_operator_schema())


def check_runtime(name: str, available: Optional[Iterable[str]] = None) -> None:
    """Refuse int8 variant ``name`` when this onnxruntime lacks an operator it needs (a minimal
    or mobile build without contrib ops): one line naming the variant, what is missing, and the
    variants that would run here."""
    have = frozenset(available) if available is not None else runtime_operators()
    variant = get_variant(name)
    missing = [op for op in variant.operators if op not in have]
    if missing:
        runnable = [v.name for v in INT8_VARIANTS.values() if all(op in have for op in v.operators)]
        alternatives = ", ".join(runnable) if runnable else "none: use the fp32 model (--precision fp32)"
        raise InputError(f"this onnxruntime lacks {', '.join(missing)}, which int8 variant {name} needs; "
                         f"variants that run here: {alternatives} (or install the full onnxruntime)")
