"""The five LA-DNN lesion labels and every spelling of them seen in published files."""

from __future__ import annotations

import re

__all__ = ["LESIONS", "LESION_NAMES", "COVID_ALIASES", "canonical_lesion", "UnknownLesionError"]

# Canonical lesion codes, in the order of the network's lesion outputs.
LESIONS = ("GGO", "Csld", "CrPa", "AirBr", "InSepThi")

LESION_NAMES = {
    "GGO": "ground-glass opacity",
    "Csld": "consolidation",
    "CrPa": "crazy paving",
    "AirBr": "air bronchograms",
    "InSepThi": "interlobular septal thickening",
}

# Spellings found in the LA-DNN split files, the metadata headers and the batch CSVs, lower-cased
# with spaces, hyphens and underscores removed.
_ALIASES = {
    "ggo": "GGO",
    "groundglassopacity": "GGO",
    "groundglassopacities": "GGO",
    "csld": "Csld",
    "consolidation": "Csld",
    "crpa": "CrPa",
    "crazypaving": "CrPa",
    "crazypavingappearance": "CrPa",
    "crazypavingpattern": "CrPa",
    "airbr": "AirBr",
    "aibr": "AirBr",
    "airbronchogram": "AirBr",
    "airbronchograms": "AirBr",
    "airbronchogramsign": "AirBr",
    "insepthi": "InSepThi",
    "insep": "InSepThi",
    "interlobularseptalthickening": "InSepThi",
    "interlobularseptathickening": "InSepThi",
}

# Header spellings of the COVID-19 label column (the release metadata writes a zero for the O).
COVID_ALIASES = frozenset({"cvd19", "c0vid19", "covid19", "covid"})


class UnknownLesionError(ValueError):
    """A lesion name that maps to none of the five canonical lesions."""


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def canonical_lesion(name: str, *, source: str = "") -> str:
    """Map a lesion spelling such as `Aibr`, `InSep` or `consolidation(Csld)` to its canonical code.

    A header of the form `long name(CODE)` maps through its code. Raises `UnknownLesionError` naming
    the spelling, and `source` when given, for a name that is not a known lesion.
    """
    text = name.strip()
    match = re.fullmatch(r"(.*?)\(\s*([^()]+?)\s*\)", text)
    candidates = [match.group(2), match.group(1)] if match else [text]
    for candidate in candidates:
        code = _ALIASES.get(_key(candidate))
        if code is not None:
            return code
    where = f" in {source}" if source else ""
    raise UnknownLesionError(
        f"unknown lesion name {name!r}{where}: expected one of {list(LESIONS)} or a known spelling "
        f"such as 'Aibr', 'InSep' or 'consolidation(Csld)'"
    )


def is_covid_header(name: str) -> bool:
    return _key(name) in COVID_ALIASES
