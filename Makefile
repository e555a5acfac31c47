# GVSL for 3D Slicer: two commands on a fresh machine with Python >= 3.10 and pip.
#   make demo   phantoms -> pretrain -> fine-tune -> segment (phantom + real CTA) -> evaluate -> pictures
#   make test   the whole test suite (what CI runs)
#   make pictures  docs/slicer/*.png, drawn by Slicer's own MRML views offscreen (slicer-core)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch on this machine; users with a GPU install their own torch (pyproject: torch>=2.1).
TORCH  ?= torch==2.13.0
DEMO_OUT ?= demo_out
SLICER_CORE  ?= slicer-core~=5.13.0
TRAME_SLICER ?= trame-slicer==2.0.0

.PHONY: venv demo test pictures lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: GVSLCore/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e "GVSLCore[test]"
	@# Slicer's MRML core for the MRML tests (Testing/slicer/test_mrml_*.py): wheels for Python 3.11 only;
	@# trame-slicer only for the terminology lists it ships (no dependencies). Elsewhere those tests skip.
	-$(BIN)/python -m pip install -q "$(SLICER_CORE)" && $(BIN)/python -m pip install -q --no-deps "$(TRAME_SLICER)" \
		|| echo "slicer-core is not available for this Python: the MRML tests will be skipped"
	touch $@

demo: venv
	$(BIN)/gvsl demo $(DEMO_OUT)

test: venv
	$(BIN)/python -m pytest -q Testing

# docs/slicer/*.png: what a user sees in Slicer, drawn offscreen by Slicer's own displayable managers
# (slicer-core; needs ../shared/data/chest_cta, about a minute on two cores).
pictures: venv
	$(BIN)/python benchmarks/slicer_pictures.py --out docs/slicer

lint: venv
	$(BIN)/ruff check GVSLCore GVSLSlicer Testing benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
