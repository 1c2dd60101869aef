#!/usr/bin/env bash
# Entry point: bootstraps .venv from requirements*.txt, then runs an experiment, a tool, the tests or the benchmarks.
#   bash run.sh exp042 [--input DIR] [--smoke] [--set key.path=value ...] [--name NAME] [--force]
#   bash run.sh prepare DOWNLOAD_DIR [--out input/blemore] [--encoders a,b] [--allow-missing]
#   bash run.sh predict exp042[@variant] --input DIR     bash run.sh report exp042[@variant] [--input DIR]
#   bash run.sh ensemble exp040 exp042    bash run.sh leaderboard [--smoke]    bash run.sh score PRED LABELS
#   bash run.sh compare exp040 exp043 [--input DIR]   bash run.sh results [--dry-run] [--render-only]
#   bash run.sh synth --out DIR           bash run.sh test [pytest args]       bash run.sh bench [--full-size]
#   bash run.sh extract video|audio|egemaps|compare|faces [args]
#   bash run.sh tune exp042 [--trials N] [--workers K] [--storage URL] [--study NAME] [--input DIR] [--smoke] [--summary]
#   bash run.sh suite EXP [EXP ...] [--worlds a,b] [--seeds N] [--set k=v ...]    bash run.sh shift [--input DIR]
#   bash run.sh db start|stop|url        (a local PostgreSQL server for shared studies; see docs/tuning.md)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Install a requirements file once; reinstall only when its content changes (stamp = its sha256).
# Extra arguments go to pip (--no-deps for packages whose declared dependencies we must not pull).
install_requirements() {
  local file="$1" stamp=".venv/.$1.sha256" sum
  shift
  sum="$(sha256sum "$file" | cut -d' ' -f1)"
  if [[ ! -x "$PY" ]]; then
    echo "creating .venv (first run; installs $file, a few minutes)" >&2
    python3 -m venv .venv
  fi
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]]; then
    echo "installing $file into .venv" >&2
    "$PY" -m pip install -q --disable-pip-version-check "$@" -r "$file" >&2
    echo "$sum" > "$stamp"
  fi
}

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 1 ]] || usage
cmd="$1"; shift
case "$cmd" in
  test)
    install_requirements requirements.txt
    install_requirements requirements-extract.txt
    install_requirements requirements-extract-nodeps.txt --no-deps
    # paths given (tests/test_x.py, tests/test_x.py::name): only those; otherwise the whole suite
    for arg in "$@"; do [[ "$arg" == -* ]] || exec "$PY" -m pytest -q "$@"; done
    exec "$PY" -m pytest -q tests "$@" ;;
  bench)
    install_requirements requirements.txt
    install_requirements requirements-extract.txt
    install_requirements requirements-extract-nodeps.txt --no-deps
    exec "$PY" -m tools.bench "$@" ;;
  ensemble|score|tune)
    install_requirements requirements.txt
    exec "$PY" -m "src.$cmd" "$@" ;;
  report|leaderboard|compare)
    install_requirements requirements.txt
    exec "$PY" -m "src.analysis.$cmd" "$@" ;;
  synth|prepare)
    install_requirements requirements.txt
    exec "$PY" -m "src.data.$cmd" "$@" ;;
  predict)
    install_requirements requirements.txt
    exec "$PY" -m src.run.predict "$@" ;;
  results)
    install_requirements requirements.txt
    exec "$PY" -m src.analysis.results_page "$@" ;;
  extract)
    install_requirements requirements.txt
    install_requirements requirements-extract.txt
    install_requirements requirements-extract-nodeps.txt --no-deps
    [[ $# -ge 1 ]] || usage
    kind="$1"; shift
    exec "$PY" -m "src.features.extract_$kind" "$@" ;;
  suite)
    install_requirements requirements.txt
    install_requirements requirements-extract-nodeps.txt --no-deps
    exec "$PY" -m src.suite "$@" ;;
  shift)
    install_requirements requirements.txt
    exec "$PY" -m src.analysis.shift "$@" ;;
  db)
    install_requirements requirements.txt
    exec "$PY" -m src.db "$@" ;;
  exp*)
    install_requirements requirements.txt
    exec "$PY" -m src.main "$cmd" "$@" ;;
  *) usage ;;
esac
