#!/usr/bin/env bash
# Entry point: bootstraps .venv from requirements*.txt, then runs an experiment, the tests or the benchmarks.
#   bash run.sh exp042 [--input DIR] [--smoke] [--force] [--set key.path=value ...]
#   bash run.sh test [pytest args]        bash run.sh bench [--full-size]
#   bash run.sh ensemble exp040 exp042    bash run.sh extract video|audio [args]
#   bash run.sh prepare DOWNLOAD_DIR [--out input/blemore] [--encoders a,b] [--allow-missing]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Install a requirements file once; reinstall only when its content changes (stamp = its sha256).
install_requirements() {
  local file="$1" stamp=".venv/.$1.sha256" sum
  sum="$(sha256sum "$file" | cut -d' ' -f1)"
  if [[ ! -x "$PY" ]]; then
    echo "creating .venv (first run; installs $file, a few minutes)" >&2
    python3 -m venv .venv
  fi
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]]; then
    echo "installing $file into .venv" >&2
    "$PY" -m pip install -q --disable-pip-version-check -r "$file" >&2
    echo "$sum" > "$stamp"
  fi
}

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 1 ]] || usage
cmd="$1"; shift
case "$cmd" in
  test)
    install_requirements requirements.txt
    install_requirements requirements-extract.txt
    exec "$PY" -m pytest -q tests "$@" ;;
  bench)
    install_requirements requirements.txt
    install_requirements requirements-extract.txt
    exec "$PY" -m src.bench "$@" ;;
  ensemble)
    install_requirements requirements.txt
    exec "$PY" src/ensemble.py "$@" ;;
  prepare)
    install_requirements requirements.txt
    exec "$PY" -m src.prepare "$@" ;;
  extract)
    install_requirements requirements.txt
    install_requirements requirements-extract.txt
    [[ $# -ge 1 ]] || usage
    kind="$1"; shift
    exec "$PY" -m "src.features.extract_$kind" "$@" ;;
  exp*)
    install_requirements requirements.txt
    exec "$PY" -m src.experiments "$cmd" "$@" ;;
  *) usage ;;
esac
