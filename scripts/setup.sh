# Set-up shared by the README's two commands: source it (`. scripts/setup.sh [extra requirement files]`).
# Creates .venv on first use, installs torch (the CPU build when this machine has no CUDA, so pip does not
# pull a multi-GB CUDA wheel), then the pinned requirements; re-runs are instant while nothing changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pip install -q torch==2.13.0                        # the default PyPI wheel is the CUDA build
  else                                                  # a local CPU wheel, else PyTorch's CPU index
    pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
fi
stamp=.venv/.requirements-$(cat requirements.txt "$@" | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  extra=(); for f in "$@"; do extra+=(-r "$f"); done
  pip install -q -r requirements.txt "${extra[@]}" 2> >(grep -v "is ignored" >&2)
  python -c "import torch, transformers, numpy, PIL, safetensors, tqdm, pytest" && touch "$stamp"
fi
