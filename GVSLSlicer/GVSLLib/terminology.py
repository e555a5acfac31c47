"""Segment names, colours and SNOMED CT terminology for segmentation results.

The heart template lives in ``Resources/Terminology``: ``GVSLHeart.csv`` (a Slicer colour table
with terminology columns) and ``SegmentationCategoryTypeModifier-GVSLHeart.term.json`` (the same
entries as a Slicer terminology context, so the segment editor's terminology picker lists them).
Models carry their own label table (gvslcore.labels format); :func:`labels_from_table` turns it
into the same :class:`SegmentLabel` records, and :func:`terminology_entry` into the string Slicer
stores in a segment's ``TerminologyEntry`` tag.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONTEXT_NAME = "Segmentation category and type - GVSL heart"
REGION_CONTEXT_NAME = "Anatomic codes - DICOM master list"
COLOR_TABLE_FILE = "GVSLHeart.csv"
TERMINOLOGY_FILE = "SegmentationCategoryTypeModifier-GVSLHeart.term.json"


@dataclass(frozen=True)
class CodedTerm:
    """A coded concept, e.g. ``CodedTerm('SCT', '87878005', 'Left ventricle')``."""

    scheme: str
    value: str
    meaning: str

    def serialize(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> CodedTerm | None:
        if not d or not d.get("value"):
            return None
        return CodedTerm(str(d.get("scheme", "SCT")), str(d["value"]), str(d.get("meaning", "")))


ANATOMICAL_STRUCTURE = CodedTerm("SCT", "123037004", "Anatomical Structure")
EMPTY = CodedTerm("", "", "")


@dataclass(frozen=True)
class SegmentLabel:
    """One label: value in the label map, segment name, colour (RGB in [0, 1]), terminology."""

    value: int
    name: str
    color: tuple[float, float, float]
    category: CodedTerm = ANATOMICAL_STRUCTURE
    type: CodedTerm | None = None
    modifier: CodedTerm | None = None


def terminology_entry(label: SegmentLabel, context: str = CONTEXT_NAME) -> str:
    """The serialized terminology entry Slicer keeps in a segment's ``TerminologyEntry`` tag.

    Format (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry):
    ``context~category~type~typeModifier~regionContext~region~regionModifier``, each code ``scheme^value^meaning``.
    """
    parts = [
        context,
        label.category.serialize(),
        (label.type or EMPTY).serialize(),
        (label.modifier or EMPTY).serialize(),
        REGION_CONTEXT_NAME,
        EMPTY.serialize(),
        EMPTY.serialize(),
    ]
    return "~".join(parts)


def read_color_table_csv(path: str | os.PathLike) -> list[SegmentLabel]:
    """Labels from a Slicer CSV colour table with terminology columns (value 0 is skipped)."""
    labels = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            value = int(row["LabelValue"])
            if value == 0:
                continue

            def code(prefix: str, row: dict[str, str] = row) -> CodedTerm | None:
                scheme, val, meaning = (row.get(f"{prefix}_{k}", "") or "" for k in ("CodingScheme", "CodeValue", "CodeMeaning"))
                return CodedTerm(scheme, val, meaning) if val else None

            labels.append(SegmentLabel(
                value=value,
                name=row["Name"],
                color=(int(row["Color_R"]) / 255.0, int(row["Color_G"]) / 255.0, int(row["Color_B"]) / 255.0),
                category=code("Category") or ANATOMICAL_STRUCTURE,
                type=code("Type"),
                modifier=code("TypeModifier"),
            ))
    return labels


def heart_template(resources_dir: str | os.PathLike) -> list[SegmentLabel]:
    """The heart template shipped in ``<Resources>/Terminology``."""
    return read_color_table_csv(Path(resources_dir) / "Terminology" / COLOR_TABLE_FILE)


def labels_from_table(items: list[dict[str, Any]]) -> list[SegmentLabel]:
    """Labels from a model's label table (gvslcore.labels ``LabelInfo.to_dict()`` records)."""
    labels = []
    for d in items:
        color = d.get("color") or (0.5, 0.5, 0.5)
        if max(color) > 1.0:  # 0-255 colours in hand-written tables
            color = [c / 255.0 for c in color]
        labels.append(SegmentLabel(
            value=int(d["value"]),
            name=str(d["name"]),
            color=(float(color[0]), float(color[1]), float(color[2])),
            category=CodedTerm.from_dict(d.get("category")) or ANATOMICAL_STRUCTURE,
            type=CodedTerm.from_dict(d.get("type")),
            modifier=CodedTerm.from_dict(d.get("modifier")),
        ))
    return labels


def label_table_dicts(labels: list[SegmentLabel]) -> list[dict[str, Any]]:
    """Labels as gvsl label-table records (``gvsl finetune --label-table``, gvslcore.labels format)."""
    def code(term: CodedTerm | None) -> dict[str, str] | None:
        return {"scheme": term.scheme, "value": term.value, "meaning": term.meaning} if term else None

    return [{"value": lab.value, "name": lab.name, "color": [round(c, 4) for c in lab.color],
             "category": code(lab.category), "type": code(lab.type)} for lab in labels]


def normalize_name(name: str) -> str:
    """'Left_Ventricle ' -> 'left ventricle'."""
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


# Names annotators commonly type for the template structures.
_SYNONYMS = {
    "lv": "left ventricle", "lv blood pool": "left ventricle", "left ventricle blood pool": "left ventricle",
    "left ventricle of heart": "left ventricle",
    "rv": "right ventricle", "right ventricle of heart": "right ventricle",
    "la": "left atrium", "ra": "right atrium",
    "myo": "left ventricular myocardium", "myocardium": "left ventricular myocardium",
    "lv myocardium": "left ventricular myocardium", "left ventricle myocardium": "left ventricular myocardium",
    "myocardium of left ventricle": "left ventricular myocardium",
    "aorta": "ascending aorta", "ao": "ascending aorta", "aa": "ascending aorta",
    "pa": "pulmonary artery", "pulmonary trunk": "pulmonary artery",
}


def match_segments(segments: list[tuple[str, str | None]], labels: list[SegmentLabel]) -> dict[str, int]:
    """Map segments to label values.

    Args:
        segments: (segment name, terminology type code value or None) for each segment.
        labels: the label table to map onto.

    Returns:
        segment name -> label value, for the segments that match a label by SNOMED CT type code,
        by name, or by a common abbreviation. Each label is used at most once.
    """
    by_name = {normalize_name(lab.name): lab.value for lab in labels}
    by_code = {lab.type.value: lab.value for lab in labels if lab.type}
    result: dict[str, int] = {}
    used: set[int] = set()
    for name, code in segments:
        value = None
        if code and code in by_code and by_code[code] not in used:
            value = by_code[code]
        if value is None:
            key = normalize_name(name)
            key = _SYNONYMS.get(key, key)
            candidate = by_name.get(key)
            if candidate is not None and candidate not in used:
                value = candidate
        if value is not None:
            result[name] = value
            used.add(value)
    return result


def type_code_from_entry(entry: str | None) -> str | None:
    """The type code value of a serialized terminology entry (None if absent)."""
    if not entry:
        return None
    parts = entry.split("~")
    if len(parts) < 3:
        return None
    fields = parts[2].split("^")
    return fields[1] if len(fields) > 1 and fields[1] else None
