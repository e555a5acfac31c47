"""The extension's files: module code compiles for Slicer's Python (3.12) and passes ruff, the CMake
lists name exactly the files on disk (checked by running CMake against a stand-in Slicer), the
extension description agrees with the CMake metadata, and each module has its Slicer self-test."""

from __future__ import annotations

import ast
import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slicer_testpaths import CORE_DIR, MODULES, REPO, RESOURCES, SLICER_DIR

MODULE_FILES = sorted(SLICER_DIR.glob("*.py")) + sorted((SLICER_DIR / "GVSLLib").glob("*.py"))
TEST_DIR = Path(__file__).resolve().parent


def python312() -> str | None:
    candidates = [shutil.which("python3.12")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 12)":
            return candidate
    return None


# -- Python ------------------------------------------------------------------------------------------
def test_module_files_compile_here() -> None:
    assert {p.stem for p in SLICER_DIR.glob("*.py")} == set(MODULES)
    for path in MODULE_FILES:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_module_files_compile_for_python_312() -> None:
    """Slicer 5.8+ embeds Python 3.12."""
    interpreter = sys.executable if sys.version_info[:2] == (3, 12) else python312()
    if interpreter is None:
        pytest.skip("no Python 3.12 interpreter found (ruff's syntax check still runs)")
    code = "import sys\nfor p in sys.argv[1:]:\n    compile(open(p, encoding='utf-8').read(), p, 'exec')\n"
    out = subprocess.run([interpreter, "-c", code, *map(str, MODULE_FILES)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def ruff_command() -> list[str]:
    local = Path(sys.executable).parent / "ruff"
    if local.is_file():
        return [str(local)]
    found = shutil.which("ruff")
    if found:
        return [found]
    pytest.skip("ruff is not installed")


def test_ruff_passes() -> None:
    out = subprocess.run([*ruff_command(), "check", "--no-cache", str(SLICER_DIR), str(TEST_DIR)],
                         capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# -- module structure ----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_module_structure(module: str) -> None:
    source = (SLICER_DIR / f"{module}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for suffix, base in (("", "ScriptedLoadableModule"), ("Widget", "ScriptedLoadableModuleWidget"),
                         ("Logic", "ScriptedLoadableModuleLogic"), ("Test", "ScriptedLoadableModuleTest")):
        cls = classes.get(module + suffix)
        assert cls is not None, f"{module}{suffix} missing"
        assert base in {getattr(b, "id", None) for b in cls.bases}
    test_methods = [n.name for n in classes[module + "Test"].body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert test_methods
    assert "CTACardio" in source  # the self-tests use SampleData's cardiac CTA
    assert f'slicerglue.load_ui(self, "{module}")' in source
    title = re.search(r'self\.parent\.title = "([^"]+)"', source).group(1)
    assert title == module.replace("GVSL", "GVSL ")
    # Widgets stay thin: no subprocess or heavy imports in the module files.
    assert "subprocess" not in source and "import torch" not in source


# -- CMake ---------------------------------------------------------------------------------------------
def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL)
    assert match, variable
    return match.group(1).split()


def test_cmake_lists_match_files() -> None:
    text = (SLICER_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    lib = cmake_list(text, "GVSL_LIB_SCRIPTS")
    assert sorted(lib) == sorted(f"GVSLLib/{p.name}" for p in (SLICER_DIR / "GVSLLib").glob("*.py"))
    names = re.findall(r"slicerMacroBuildScriptedModule\(\s*NAME (\w+)\s+SCRIPTS (\S+)", text)
    assert [(n, s) for n, s in names] == [(m, f"{m}.py") for m in MODULES]
    assert text.count("WITH_GENERIC_TESTS") == len(MODULES)
    assert re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", text) == [f"{m}.py" for m in MODULES]
    resources = cmake_list(text, "GVSL_RESOURCES")
    on_disk = sorted(p.relative_to(RESOURCES).as_posix() for p in RESOURCES.rglob("*") if p.is_file())
    assert sorted(resources) == on_disk
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(GVSLSlicer)" in top
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', top)


MOCK_SLICER = textwrap.dedent("""
    # A stand-in for Slicer's CMake package: checks and records what the extension asks for.
    set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
    set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
    set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/empty.cmake)
    set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
    set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
    function(slicerMacroBuildScriptedModule)
      cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
      if(MY_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "unknown arguments: ${MY_UNPARSED_ARGUMENTS}")
      endif()
      foreach(f ${MY_SCRIPTS} ${MY_RESOURCES})
        if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${f})
          message(FATAL_ERROR "missing ${f}")
        endif()
        configure_file(${CMAKE_CURRENT_SOURCE_DIR}/${f} ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${f} COPYONLY)
      endforeach()
      file(APPEND ${CMAKE_BINARY_DIR}/modules.txt "${MY_NAME}|${MY_WITH_GENERIC_TESTS}|${MY_SCRIPTS}\\n")
      install(DIRECTORY ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/ DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR})
    endfunction()
    function(slicer_add_python_unittest)
      cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
      if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT})
        message(FATAL_ERROR "missing ${MY_SCRIPT}")
      endif()
      file(APPEND ${CMAKE_BINARY_DIR}/unittests.txt "${MY_SCRIPT}\\n")
    endfunction()
""")


def test_cmake_configure_and_install_with_a_stand_in_slicer(tmp_path: Path) -> None:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    mock = tmp_path / "Slicer"
    mock.mkdir()
    (mock / "SlicerConfig.cmake").write_text(MOCK_SLICER)
    (mock / "empty.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    configure = subprocess.run([cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={mock}", "-DBUILD_TESTING=ON"],
                               capture_output=True, text=True, timeout=300, check=False)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    modules = [line.split("|") for line in (build / "modules.txt").read_text().splitlines()]
    assert [(name, generic) for name, generic, _ in modules] == [(m, "TRUE") for m in MODULES]
    assert (build / "unittests.txt").read_text().split() == [f"{m}.py" for m in MODULES]
    install = subprocess.run([cmake, "--install", str(build), "--prefix", str(prefix)],
                             capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    installed = prefix / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    for module in MODULES:
        assert (installed / f"{module}.py").is_file()
        assert (installed / "Resources" / "UI" / f"{module}.ui").is_file()
        assert (installed / "Resources" / "Icons" / f"{module}.png").is_file()
    assert (installed / "Resources" / "Terminology" / "GVSLHeart.csv").is_file()
    core_files = {p.relative_to(CORE_DIR).as_posix() for p in (CORE_DIR / "gvslcore").rglob("*.py") if "__pycache__" not in p.parts}
    bundled = {p.relative_to(installed / "GVSLCore").as_posix() for p in (installed / "GVSLCore" / "gvslcore").rglob("*.py")}
    assert core_files == bundled

    # The installed layout works as the modules use it: GVSLLib finds the bundled core and the
    # resources, and the core imports from there.
    probe = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(installed)!r})
        from GVSLLib import deps, terminology
        root = deps.gvslcore_root({str(installed)!r})
        assert root is not None, "bundled gvslcore not found"
        sys.path.insert(0, str(root))
        import gvslcore.cli
        assert gvslcore.cli.__file__.startswith({str(installed)!r}), gvslcore.cli.__file__
        print(len(terminology.heart_template({str(installed / "Resources")!r})))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""}, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7"


def cmake_value(text: str, variable: str) -> str:
    return re.search(rf'set\({variable} "([^"]*)"\)', text).group(1)


def test_s4ext_agrees_with_cmake_metadata() -> None:
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    fields = {}
    for line in (REPO / "GVSLSlicer.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    repo_url = cmake_value(top, "GVSL_REPOSITORY_URL")
    raw_url = cmake_value(top, "GVSL_RAW_URL")
    assert fields["homepage"] == repo_url and fields["scmurl"] == repo_url + ".git"
    assert fields["depends"] == cmake_value(top, "EXTENSION_DEPENDS")
    assert fields["category"] == cmake_value(top, "EXTENSION_CATEGORY")
    assert fields["description"] == cmake_value(top, "EXTENSION_DESCRIPTION")
    assert fields["contributors"] == cmake_value(top, "EXTENSION_CONTRIBUTORS")
    assert fields["iconurl"] == cmake_value(top, "EXTENSION_ICONURL").replace("${GVSL_RAW_URL}", raw_url)
    assert fields["screenshoturls"] == cmake_value(top, "EXTENSION_SCREENSHOTURLS").replace("${GVSL_RAW_URL}", raw_url)
    for url in (fields["iconurl"], fields["screenshoturls"]):
        assert (REPO / url.removeprefix(raw_url + "/")).is_file(), url
    assert cmake_value(top, "EXTENSION_HOMEPAGE") == "${GVSL_REPOSITORY_URL}"


def test_readme_section() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "## Install in 3D Slicer" in text
    for module in MODULES:
        assert module.replace("GVSL", "GVSL ") in text
