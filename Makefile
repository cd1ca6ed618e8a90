# ops.runbooks — every entry point a developer or CI needs. `make help` lists them.
VENV ?= $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)

.PHONY: help deps test demo lab-up lab-down lab-status lint sanity unit integration molecule build

help:  ## this list
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps:  ## install everything missing on this machine (apt, venv, pm2, ansible-test seed)
	@bash scripts/install-deps.sh

test:  ## the whole suite as CI runs it: deps, lab up, ruff, ansible-lint, sanity, pytest, lab down
	@bash scripts/test.sh

demo: deps  ## the lab DR drill: lab up, app deployed, data written, backup, dr_restore.yml (drill), report
	bash scripts/demo.sh

lab-up: deps  ## start the local lab (idempotent)
	python -m lab up

lab-down:  ## stop the lab and remove everything it created
	python -m lab down

lab-status:  ## what runs in the lab
	python -m lab status

lint: deps  ## ruff + ansible-lint (production profile)
	ruff check .
	ansible-lint

sanity: deps  ## ansible-test sanity on the collection
	bash scripts/sanity.sh

unit: deps  ## unit tests of the pure cores (no services)
	python -m pytest tests/unit

integration: lab-up  ## integration tests on the running lab
	python -m pytest -n 2 --dist loadfile tests/integration

build: deps  ## the collection tarball, in build/
	ansible-galaxy collection build --force --output-path build/

molecule: deps  ## molecule test for every role scenario (on the lab: images, PostgreSQL, Redis, release archives)
	python -m lab up
	bash scripts/molecule.sh
