#!/usr/bin/env bash
# The README's second command: set up (first run only) and run the FULL test suite. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the quick loop (no torchrun or end-to-end runs), `-k fast`.
args=("$@"); set --                      # setup.sh takes requirement files as arguments, not pytest's
. "$(dirname "$0")/setup.sh"
python -m pytest "${args[@]}"
