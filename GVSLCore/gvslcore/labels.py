"""Label tables: value, segment name, colour and SNOMED CT terminology for each label.

The heart template is the one of DESIGN.md (MM-WHS values given for importing that data set).
A label table travels inside every segmentation model file and every .seg.nrrd we write.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Code:
    """A coded concept: (scheme, value, meaning), e.g. ('SCT', '87878005', 'Left ventricle')."""

    scheme: str
    value: str
    meaning: str


ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")


@dataclass(frozen=True)
class LabelInfo:
    """One label of a label map.

    Attributes:
        value: the integer voxel value (1..N; 0 is background).
        name: the segment name shown to users.
        color: RGB in [0, 1].
        category: terminology category code.
        type: terminology type code.
        source_value: the value in a source data set (MM-WHS) when importing it, else None.
    """

    value: int
    name: str
    color: tuple[float, float, float]
    category: Code = ANATOMICAL_STRUCTURE
    type: Code | None = None
    source_value: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> LabelInfo:
        def code(c: dict | None) -> Code | None:
            return Code(**c) if c else None

        return LabelInfo(
            value=int(d["value"]),
            name=str(d["name"]),
            color=tuple(float(c) for c in d.get("color", (0.5, 0.5, 0.5))),  # type: ignore[arg-type]
            category=code(d.get("category")) or ANATOMICAL_STRUCTURE,
            type=code(d.get("type")),
            source_value=d.get("source_value"),
        )


@dataclass
class LabelTable:
    """An ordered list of labels; background (0) is implicit."""

    labels: list[LabelInfo] = field(default_factory=list)

    def __iter__(self):
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def values(self) -> list[int]:
        return [lab.value for lab in self.labels]

    @property
    def num_classes(self) -> int:
        """Classes a segmentation network predicts: background plus the largest label value."""
        return max(self.values, default=0) + 1

    def name_of(self, value: int) -> str:
        for lab in self.labels:
            if lab.value == value:
                return lab.name
        raise KeyError(value)

    def to_list(self) -> list[dict]:
        return [lab.to_dict() for lab in self.labels]

    @staticmethod
    def from_list(items: list[dict]) -> LabelTable:
        return LabelTable([LabelInfo.from_dict(d) for d in items])


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (round(r / 255.0, 4), round(g / 255.0, 4), round(b / 255.0, 4))


# The seven structures of MM-WHS (DESIGN.md): codes as 3D Slicer's terminology lists them
# (Terminologies/Resources/SegmentationCategoryTypeModifier-DICOM-Master.json, "Anatomical
# Structure" category); Slicer's core lists have no myocardium entry, so that one follows
# SlicerTotalSegmentator's mapping of heart_myocardium (SCT 74281007 "Myocardium"). The colours are
# our own: Slicer recommends near-identical terracotta shades for the four chambers, myocardium and
# aorta, which cannot be told apart in a view, so each structure has its own hue (red, blue, orange,
# cyan, yellow, magenta, green: about 30 degrees apart or more), and the project's terminology file
# (Resources/Terminology) recommends these.
HEART_LABELS: LabelTable = LabelTable([
    LabelInfo(1, "left ventricle", _rgb(220, 45, 45),
              type=Code("SCT", "87878005", "Left ventricle"), source_value=500),
    LabelInfo(2, "right ventricle", _rgb(60, 110, 220),
              type=Code("SCT", "53085002", "Right ventricle"), source_value=600),
    LabelInfo(3, "left atrium", _rgb(250, 135, 20),
              type=Code("SCT", "82471001", "Left atrium"), source_value=420),
    LabelInfo(4, "right atrium", _rgb(70, 200, 220),
              type=Code("SCT", "73829009", "Right atrium"), source_value=550),
    LabelInfo(5, "left ventricular myocardium", _rgb(225, 225, 60),
              type=Code("SCT", "74281007", "Myocardium"), source_value=205),
    LabelInfo(6, "ascending aorta", _rgb(200, 60, 170),
              type=Code("SCT", "54247002", "Ascending aorta"), source_value=820),
    LabelInfo(7, "pulmonary artery", _rgb(70, 180, 80),
              type=Code("SCT", "81040000", "Pulmonary artery"), source_value=850),
])
