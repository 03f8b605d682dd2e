# The set-up and the everyday commands. README.md's two commands are `make run` and `make test`;
# .ci/run calls `make test`. Each step is idempotent and skipped when its inputs did not change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NPM_CI := npm ci --no-audit --no-fund --omit=optional

.PHONY: run test screenshots setup browser

## run: install what is missing, then start the hall with demo data on http://127.0.0.1:8080
run: setup
	$(BIN)/hall serve --demo

## test: install what is missing (Chromium included), then run the whole test suite
test: setup browser
	$(BIN)/python -m pytest

## screenshots: every page at phone, kiosk (1080x1920) and desktop sizes, into artifacts/screenshots/
screenshots: setup browser
	$(BIN)/python scripts/screenshots.py artifacts/screenshots

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $@

# The pages' browser libraries (socket.io-client, pdf.js) and the tests' axe-core, exactly as
# package-lock.json pins them. The hall serves them from here (HALL_VENDOR_DIR).
node_modules/.installed: package.json package-lock.json
	$(NPM_CI)
	touch $@

# Debian's Chromium and a CJK font for the browser tests (never `playwright install`).
browser:
	sh scripts/install-browser.sh
