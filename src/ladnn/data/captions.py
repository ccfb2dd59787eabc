"""Propose lesion labels from figure captions with fixed rules, and measure them against hand labels.

Many COVID images come with the caption of the figure they were cropped from but without lesion
labels. `extract_lesions` reads such a caption and marks each of the five LA-DNN lesions that it
asserts. `evaluate_extractor` compares those proposals with LA-DNN's hand labels in the release
metadata file.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from ladnn.data.encoding import read_csv_any_encoding
from ladnn.data.lesions import LESIONS

__all__ = ["extract_lesions", "evaluate_extractor"]

# Phrases that name each lesion. Captions extracted from PDFs sometimes lose their spaces
# ("patchygroundglassopacitiesinbilateral"), so only the short GGO abbreviation and the septa
# words require a word boundary. Each pattern needs only to match the start of a mention.
_LESION_PATTERNS = {
    "GGO": r"ground\W*g[lr]ass|\bggos?\b|frosted\W*(?:glass|hyaline)",
    "Csld": r"consolidat",
    "CrPa": r"crazy\W*pav",
    "AirBr": r"bronchogram|bronchoinflation|air\W*bronch(?:ial|us)\W*sign",
    "InSepThi": (
        r"sept(?:al|a|um)\W*thicken"
        r"|thicken(?:ed|ing)\W+(?:of\W+)?(?:the\W+)?(?:(?:inter|intra)\W*lobular\W+)?sept(?:a|al|um)\b"
        r"|sept(?:a|um)\W+(?:\w+\W+){0,2}thicken"
    ),
}
_LESION_RES = {
    code: re.compile(pattern, re.IGNORECASE) for code, pattern in _LESION_PATTERNS.items()
}

# Cues that negate lesions named after them, as in "no consolidation" or "without GGO".
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|neither|nor|absence\s+of|absent|free\s+of|lack\s+of|negative\s+for"
    r"|ruled?\s+out)\b",
    re.IGNORECASE,
)
# Cues that negate a lesion named just before them, as in "consolidation was not seen". The
# leading `\w*` skips the rest of a term matched by its prefix ("consolidat" + "ion").
_NEGATION_AFTER = re.compile(
    r"^\w*\W*(?:(?:was|were|is|are|has\s+been|have\s+been)\s+)?"
    r"(?:not\s+(?:seen|observed|found|present|detected|identified|visible|evident)|absent)\b",
    re.IGNORECASE,
)
# Phrases that contain a negation cue but still assert the lesion ("no change in the consolidation").
_PSEUDO_NEGATION = re.compile(
    r"\b(?:not\s+only|no\s+(?:\w+\s+)?(?:change|increase|decrease|progression|improvement"
    r"|further))\b",
    re.IGNORECASE,
)
# A clause ends at sentence punctuation, a bracket or a contrasting conjunction. A full stop
# between digits ("0.5 cm") does not end one.
_CLAUSE_BREAK = re.compile(
    r"(?<!\d)\.|\.(?!\d)|[;:!?()\[\]]"
    r"|\b(?:but|however|although|though|whereas|while|yet|except)\b",
    re.IGNORECASE,
)
# A negation cue before a mention reaches it across at most this many words.
_NEGATION_WINDOW_WORDS = 6

# Characters that PDF extraction and the GBK release metadata put in place of ASCII punctuation.
_PUNCTUATION = str.maketrans(
    {"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
     "\u2212": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "}
)  # fmt: skip


def _normalise(caption: str) -> str:
    """Fold full-width forms, dashes and quotes to ASCII and drop the `['...']` list wrapper."""
    text = unicodedata.normalize("NFKC", caption).translate(_PUNCTUATION).strip()
    if text.startswith("['") and text.endswith("']"):
        text = text[2:-2]
    return text


def _is_negated(clause: str, start: int, end: int) -> bool:
    """Check whether the mention at `clause[start:end]` lies in the scope of a negation cue."""
    before = _PSEUDO_NEGATION.sub(lambda match: " " * len(match.group()), clause[:start])
    for cue in _NEGATION_BEFORE.finditer(before):
        if len(before[cue.end() :].split()) <= _NEGATION_WINDOW_WORDS:
            return True
    return _NEGATION_AFTER.match(clause[end:]) is not None


def extract_lesions(caption: str) -> dict[str, int]:
    """Return 1 for each of the five lesions that `caption` asserts and 0 for the others.

    Rules:
    - Text is folded with Unicode NFKC, dashes and curly quotes become ASCII, and matching ignores
      case, so "Ground–glass", "ground glass", "groundglass" and "GGOs" are the same term.
    - Terms: GGO for "ground-glass", "GGO(s)" or "frosted glass". Csld for any word starting with
      "consolidat" (consolidation, consolidations, consolidative). CrPa for "crazy paving" in any
      form. AirBr for "bronchogram(s)", "bronchoinflation sign" or "air bronchus sign". InSepThi for
      "septal thickening", "thickened (interlobular) septa" or "septa were thickened".
    - A caption is split into clauses at . ; : ! ? brackets and "but", "however", "although" and
      similar conjunctions. Commas do not split, so "no GGO, consolidation or effusion" negates both.
    - A mention is negated when a cue such as "no", "not", "without", "absence of", "free of" or
      "negative for" precedes it in its clause with at most six words between them, or when
      "was not seen", "absent" or similar follows it directly. "No change in", "no increase in"
      and "not only" do not negate.
    - A lesion is 1 when at least one of its mentions is not negated. Words for healing
      ("absorbed", "resolution", "reduced") do not negate, because the hand labels mark lesions in
      such captions as present.
    - Unspecific wording gives no label: "patchy shadow", "high density", "reticular pattern", and
      "paving stone" or "cobblestone", which the hand labels do not mark as crazy paving.

    NOTE: the rules were written after reading the captions of the release metadata file, so their
    agreement with its hand labels (see `evaluate_extractor`) likely overstates it on new captions.
    """
    labels = dict.fromkeys(LESIONS, 0)
    if not caption:
        return labels
    text = _normalise(caption)
    bounds = [0, *(match.start() for match in _CLAUSE_BREAK.finditer(text)), len(text)]
    for clause_start, clause_end in zip(bounds, bounds[1:], strict=False):
        clause = text[clause_start:clause_end]
        for code, pattern in _LESION_RES.items():
            if labels[code]:
                continue
            for mention in pattern.finditer(clause):
                if not _is_negated(clause, mention.start(), mention.end()):
                    labels[code] = 1
                    break
    return labels


def _read_captions_and_labels(meta_info_path: str | Path) -> pd.DataFrame:
    """Read the COVID rows of the metadata file: caption, hand-labelled flag and five lesion labels."""
    frame, _ = read_csv_any_encoding(meta_info_path, header=None, skiprows=1)
    # Columns: file name, patient, the COVID label, the five lesions in LESIONS order, caption.
    if frame.shape[1] < 9:
        raise ValueError(
            f"{meta_info_path}: expected at least 9 columns (file name, patient, COVID label, five "
            f"lesions, caption), found {frame.shape[1]}"
        )
    covid = frame[frame[0].notna() & frame[2].notna()]
    table = pd.DataFrame({"caption": covid[8].fillna("").astype(str)})
    for offset, code in enumerate(LESIONS):
        table[code] = covid[3 + offset].notna().astype(int)
    table["hand_labelled"] = table[list(LESIONS)].any(axis=1)
    return table.reset_index(drop=True)


def _scores(truth: np.ndarray, proposed: np.ndarray) -> tuple[np.ndarray, ...]:
    return precision_recall_fscore_support(truth, proposed, average=None, zero_division=0)


def evaluate_extractor(meta_info_path: str | Path) -> pd.DataFrame:
    """Score `extract_lesions` per lesion against the hand labels in `COVID-CT-MetaInfo_new.csv`.

    The main columns `precision`, `recall`, `f1` and `support` (hand-labelled positives) are
    computed with `sklearn.metrics.precision_recall_fscore_support` over the COVID rows with at
    least one hand lesion code. Only those rows have known negatives, because LA-DNN left images
    without lesion codes unannotated. `precision_all_covid` and `f1_all_covid` score every COVID row
    and count each proposal on a row without codes as a false positive, so they are lower bounds.
    Recall and support are the same over all COVID rows, since the extra rows hold no positives.
    `proposed_unlabelled` counts the proposals on rows without codes, which are the images that the
    extractor is meant to label.
    """
    table = _read_captions_and_labels(meta_info_path)
    proposed = np.array([list(extract_lesions(text).values()) for text in table["caption"]])
    truth = table[list(LESIONS)].to_numpy()
    labelled = table["hand_labelled"].to_numpy()

    precision, recall, f1, support = _scores(truth[labelled], proposed[labelled])
    precision_all, _, f1_all, _ = _scores(truth, proposed)
    return pd.DataFrame(
        {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "precision_all_covid": precision_all,
            "f1_all_covid": f1_all,
            "proposed_unlabelled": proposed[~labelled].sum(axis=0),
        },
        index=pd.Index(LESIONS, name="lesion"),
    ).round(3)
