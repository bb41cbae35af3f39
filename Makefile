.PHONY: setup demo test lint
setup:
	scripts/setup.sh
demo:
	scripts/demo.sh
test:
	scripts/test.sh
lint:
	.venv/bin/ruff check .
