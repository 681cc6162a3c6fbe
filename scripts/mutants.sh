#!/usr/bin/env bash
# Breaks the code on purpose, one break at a time in a scratch copy, and runs the tests that must catch each
# (the list and how: scripts/mutants.py; the table they fill: docs/testing.md).
#   bash scripts/mutants.sh [--list] [NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" scripts/mutants.py "$@"
