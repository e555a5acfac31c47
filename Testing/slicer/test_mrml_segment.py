"""GVSL Segment's Logic against Slicer's real MRML (slicer-core): the real chest CTA as a scalar volume,
a gvslcore ``.seg.nrrd`` loaded through ``GVSLSegmentLogic.loadResult``, the heart terminology
resolved by the real Terminologies logic, and the way back to a label map bit for bit.

The CTA is resampled onto a small oblique, anisotropic grid (a rotation that is not an axis
permutation), so that the LPS (files, SimpleITK) to RAS (Slicer) conversion is checked where it can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GVSLLib import jobs, terminology
from slicer_testpaths import RESOURCES

CTA = Path(__file__).resolve().parents[3] / "shared" / "data" / "chest_cta"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GRID_SIZE = (56, 48, 36)  # x, y, z
GRID_SPACING = (1.3, 1.6, 2.2)


def oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx @ np.diag([1.0, -1.0, -1.0])


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def node_ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def assert_same_geometry(image: sitk.Image, other: sitk.Image) -> None:
    assert image.GetSize() == other.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), other.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), other.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), other.GetDirection(), atol=1e-6)


@pytest.fixture(scope="module")
def cta_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A crop of the real chest CTA around its heart, on an oblique anisotropic grid, and a 7-label heart
    label map on that grid written by gvslcore (the phantom's heart, centred on the CTA's heart)."""
    if not (CTA / "ct.nii.gz").is_file():
        pytest.skip(f"the real chest CTA is not at {CTA} (see ../shared/data/README.md)")
    from gvslcore.labels import HEART_LABELS
    from gvslcore.phantom import make_phantom
    from gvslcore.segfile import write_labels

    folder = tmp_path_factory.mktemp("cta")
    ct = sitk.ReadImage(str(CTA / "ct.nii.gz"))
    heart = sitk.ReadImage(str(CTA / "heart.nii.gz"))
    where = np.argwhere(sitk.GetArrayViewFromImage(heart) > 0).mean(0)[::-1]  # (x, y, z) index
    centre = np.asarray(heart.TransformContinuousIndexToPhysicalPoint(where.tolist()))
    direction = oblique_direction()
    half = (np.asarray(GRID_SIZE) - 1) * np.asarray(GRID_SPACING) / 2.0
    reference = sitk.Image(GRID_SIZE, sitk.sitkInt16)
    reference.SetSpacing(GRID_SPACING)
    reference.SetDirection(tuple(direction.ravel()))
    reference.SetOrigin(tuple(centre - direction @ half))
    crop = sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    sitk.WriteImage(crop, str(folder / "cta_crop.nrrd"))

    _, phantom_labels = make_phantom(3, GRID_SIZE, GRID_SPACING, tuple(direction.ravel()))
    labels = sitk.Cast(phantom_labels, sitk.sitkUInt8)
    labels.CopyInformation(crop)  # the phantom heart is centred on the physical origin, the crop on the CTA's heart
    values = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    assert values == set(range(8)), f"the crop should show all 7 heart labels, has {sorted(values)}"

    job = jobs.create_job(folder / "jobs", "segment", "Segment cta_crop", meta={"output": "segmentation.seg.nrrd"})
    write_labels(labels, job.folder / "segmentation.seg.nrrd", HEART_LABELS)
    return {"crop": crop, "labels": labels, "path": folder / "cta_crop.nrrd", "job": job, "folder": folder}


@pytest.fixture(scope="module")
def loaded(mrml, cta_case: dict) -> dict:
    import GVSLSegment
    import slicer

    mrml.clear()
    volume = slicer.util.loadVolume(str(cta_case["path"]))
    logic = GVSLSegment.GVSLSegmentLogic()
    segmentation = logic.loadResult(cta_case["job"], volume)
    return {"volume": volume, "segmentation": segmentation, "logic": logic}


def test_volume_geometry_is_simpleitk_lps_in_ras(loaded: dict, cta_case: dict) -> None:
    volume = loaded["volume"]
    assert volume.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert volume.GetImageData().GetDimensions() == GRID_SIZE
    np.testing.assert_allclose(node_ijk_to_ras(volume), LPS_TO_RAS @ ijk_to_lps(cta_case["crop"]), atol=1e-4)
    import slicer

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), sitk.GetArrayViewFromImage(cta_case["crop"]))


def test_segments_named_coloured_and_coded(loaded: dict) -> None:
    import slicer

    import mrml_app

    logic = slicer.modules.terminologies.logic()
    segmentation = loaded["segmentation"].GetSegmentation()
    for _index, _segment, label, entry in mrml_app.heart_segment_entries(segmentation, atol=1e-6):
        assert entry.GetTerminologyContextName() == terminology.CONTEXT_NAME
        # The real logic finds the entry in the GVSL heart context loaded from Resources/Terminology.
        assert logic.UpdateEntryFromLoadedTerminologies(entry, [terminology.CONTEXT_NAME], [])
        type_object = entry.GetTypeObject()
        assert type_object.GetCodeValue() == label.type.value
        assert type_object.GetCodingSchemeDesignator() == "SCT"
        recommended = type_object.GetRecommendedDisplayRGBValue()
        np.testing.assert_allclose(np.asarray(recommended) / 255.0, label.color, atol=0.5 / 255)


def test_heart_codes_are_slicers_and_colours_our_own(mrml) -> None:
    """Every heart structure's SNOMED type is in Slicer's DICOM master list (loaded by the real logic);
    the colours are deliberately not Slicer's (its near-identical terracotta shades cannot be told
    apart), and differ from them by more than rounding."""
    import slicer

    logic = slicer.modules.terminologies.logic()
    context = "Segmentation category and type - DICOM master list"
    category = slicer.vtkSlicerTerminologyCategory()
    found = {}
    for i in range(logic.GetNumberOfCategoriesInTerminology(context)):
        logic.GetNthCategoryInTerminology(context, i, category)
        if category.GetCodeValue() != "123037004":  # Anatomical Structure
            continue
        kind = slicer.vtkSlicerTerminologyType()
        for j in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            logic.GetNthTypeInTerminologyCategory(context, category, j, kind)
            found[kind.GetCodeValue()] = tuple(kind.GetRecommendedDisplayRGBValue())
    assert found, "the DICOM master list has no Anatomical Structure types"
    differ = 0
    for label in terminology.heart_template(RESOURCES):
        rgb = found.get(label.type.value)
        if rgb is None or rgb == (127, 127, 127):
            continue
        differ += int(np.abs(np.asarray(rgb) / 255.0 - np.asarray(label.color)).max() > 10 / 255)
    assert differ >= 4, "the heart colours are Slicer's again"


def test_segmentation_geometry_is_the_volumes(loaded: dict) -> None:
    import slicer
    import vtk

    segmentation_node, volume = loaded["segmentation"], loaded["volume"]
    reference = segmentation_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert reference is volume
    assert segmentation_node.GetTransformNodeID() == volume.GetTransformNodeID()
    segment_id = segmentation_node.GetSegmentation().GetNthSegmentID(0)
    internal = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    matrix = vtk.vtkMatrix4x4()
    internal.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), node_ijk_to_ras(volume), atol=1e-4)
    assert segmentation_node.GetSegmentation().ContainsRepresentation("Closed surface")


def test_label_map_back_bit_exact(loaded: dict, cta_case: dict, tmp_path: Path) -> None:
    """What GVSL Train exports from a segmentation equals the label map gvslcore wrote, voxel for voxel."""
    import slicer

    from GVSLLib import slicerglue

    volume = loaded["volume"]
    template = terminology.heart_template(RESOURCES)
    array, mapping, unmatched = slicerglue.segment_label_map(loaded["segmentation"], volume, template)
    assert unmatched == [] and sorted(mapping.values()) == list(range(1, 8))
    expected = sitk.GetArrayFromImage(cta_case["labels"])
    np.testing.assert_array_equal(array, expected)

    path = tmp_path / "labels.nrrd"
    slicerglue.export_label_map(array, volume, path)
    written = sitk.ReadImage(str(path))
    assert_same_geometry(written, cta_case["labels"])
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), expected)

    # Slicer's own export to a label map node, on the volume's geometry.
    label_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    assert slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(
        loaded["segmentation"], label_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    np.testing.assert_allclose(node_ijk_to_ras(label_node), node_ijk_to_ras(volume), atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(label_node), expected)


def test_input_export_keeps_the_volume(loaded: dict, cta_case: dict, tmp_path: Path) -> None:
    """The file GVSL Segment writes for ``gvsl segment`` (slicerglue.export_volume) is the loaded volume."""
    from GVSLLib import slicerglue

    path = tmp_path / "input.nrrd"
    slicerglue.export_volume(loaded["volume"], path)
    written = sitk.ReadImage(str(path))
    assert_same_geometry(written, cta_case["crop"])
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(cta_case["crop"]))
    assert loaded["volume"].GetStorageNode() is None or loaded["volume"].GetStorageNode().GetFileName() != str(path)


def test_reloading_into_an_existing_node(loaded: dict, cta_case: dict) -> None:
    import slicer

    target = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "target")
    node = loaded["logic"].loadResult(cta_case["job"], loaded["volume"], target)
    assert node is target
    assert [target.GetSegmentation().GetNthSegment(i).GetName() for i in range(7)] == \
        [lab.name for lab in terminology.heart_template(RESOURCES)]
