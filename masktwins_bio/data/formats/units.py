"""Physical units: every voxel size in this package is in nanometres."""
from __future__ import annotations

_TO_NM = {"nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3,
          "micron": 1e3, "micrometer": 1e3, "micrometre": 1e3, "\\u00b5m": 1e3, "mm": 1e6,
          "millimeter": 1e6, "millimetre": 1e6, "cm": 1e7, "centimeter": 1e7, "m": 1e9,
          "meter": 1e9, "metre": 1e9, "a": 0.1, "å": 0.1, "angstrom": 0.1, "pm": 1e-3,
          "picometer": 1e-3, "inch": 2.54e7, "in": 2.54e7}


def to_nm(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as nanometres; None when the unit is unknown or the value unusable."""
    if unit is None or value is None:
        return None
    factor = _TO_NM.get(str(unit).strip().lower())
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not value > 0 or value != value or value == float("inf"):
        return None
    return value * factor


def voxel_tuple(values) -> tuple | None:
    """A tuple of floats, or None when any entry is missing. Rounded to 7 significant digits:
    sizes kept as float32 in a header (NIfTI, TIFF rationals) read back as 50.00000074505806,
    which metadata and messages would carry on."""
    if values is None or any(v is None for v in values):
        return None
    return tuple(float(f"{float(v):.7g}") for v in values)
