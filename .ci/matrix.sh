#!/usr/bin/env bash
# The support matrix: the Python test suite against ONE wheel, in one virtualenv
# per (CPython, JAX) combination. Called by `make test-matrix` (and so by
# `make test` and CI). Environments live in .venv-matrix/<name> (git-ignored) and
# are reused; their dependencies are reinstalled only when pyproject.toml or the
# pins below change, the wheel (nlsq itself) every run.
#
#   name          interpreter      pins
#   py313         CPython 3.13     newest jax
#   py312         CPython 3.12     jax 0.11.x (what the GPU machines run)
#   py311-oldest  CPython 3.11     jax/jaxlib 0.9.2, numpy 2.0.2, scipy 1.16.0: the floor
#
# The default environment (.venv: CPython 3.11, newest jax for it) is tested by
# `make py-test`. Usage: .ci/matrix.sh WHEEL [NAME...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYENV_VERSIONS="${PYENV_ROOT:-$HOME/.pyenv}/versions"
MATRIX_DIR="${MATRIX_DIR:-.venv-matrix}"
# The newest patch release pyenv has of a minor version (pyenv ships 3.12 and 3.13
# beside the default 3.11 on this project's machines).
newest_python() {
  local found
  found="$(ls -d "$PYENV_VERSIONS/$1".*/bin/python 2>/dev/null | sort -V | tail -n 1)"
  echo "${found:-$PYENV_VERSIONS/$1.x/bin/python}"
}
declare -A PYTHONS=(
  [py313]="$(newest_python 3.13)"
  [py312]="$(newest_python 3.12)"
  [py311-oldest]="$(newest_python 3.11)"
)
declare -A PINS=(
  [py313]="jax"
  [py312]="jax>=0.11,<0.12"
  [py311-oldest]="jax==0.9.2 jaxlib==0.9.2 numpy==2.0.2 scipy==1.16.0"
)
ORDER=(py313 py312 py311-oldest)

wheel="${1:?usage: .ci/matrix.sh WHEEL [NAME...]}"
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")

summary=()
status=0
for name in "${names[@]}"; do
  python="${PYTHONS[$name]:?unknown matrix environment $name}"
  venv="$MATRIX_DIR/$name"
  if [ ! -x "$python" ]; then
    echo "matrix: $name needs $python, which is missing" >&2
    exit 1
  fi
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  stamp="$venv/.deps-stamp"
  want="$(cat pyproject.toml; echo "${PINS[$name]}")"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/pip" install --quiet --upgrade pip
    # shellcheck disable=SC2086 # PINS are separate requirement words
    "$venv/bin/pip" install --quiet "$wheel[test,bench]" ${PINS[$name]}
    printf '%s' "$want" > "$stamp"
  fi
  "$venv/bin/pip" install --quiet --force-reinstall --no-deps "$wheel"
  versions="$("$venv/bin/python" -c 'import sys, jax, nlsq, os; assert "site-packages" in nlsq.__file__, nlsq.__file__; print(f"CPython {sys.version.split()[0]}, jax {jax.__version__}")')"
  echo "=== matrix $name: $versions"
  start=$SECONDS
  # The installed wheel, not the source tree: python/ is not on sys.path.
  # The suite runs as three pytest processes (test files split at
  # test_distributed.py and test_nist.py). Why: XLA:CPU keeps ~3 memory mappings per
  # compiled kernel for as long as jit caches keep the executable (~270 per solver
  # program with jax 0.11.2), and once a process passes vm.max_map_count (65530) the
  # next compilation or persistent-cache load fails inside LLVM and XLA dies with
  # SIGSEGV in the C++ unwinder (_Unwind_Find_FDE) instead of raising. One-process
  # py312 runs crashed at ~400-550 tests. A jax/XLA limit, reproduced without nlsq:
  # benches/repro_many_programs.py --what jax --headroom 1500. tests/conftest.py also
  # clears JAX's caches between test files past half the limit, so either guard alone
  # suffices; every test still runs in every environment.
  first=() second=() third=()
  for file in tests/test_*.py; do
    if [[ "$file" < tests/test_distributed.py ]]; then
      first+=("$file")
    elif [[ "$file" < tests/test_nist.py ]]; then
      second+=("$file")
    else
      third+=("$file")
    fi
  done
  result="passed"
  : > "$venv/pytest.log"
  for files in "${first[*]}" "${second[*]}" "${third[*]}"; do
    # With pipefail the pipeline fails when pytest does. (Test file names have no spaces.)
    # shellcheck disable=SC2086
    if ! "$venv/bin/python" -m pytest -q -p no:cacheprovider $files | tee -a "$venv/pytest.log" | tail -n 3; then
      result="FAILED"
      status=1
    fi
  done
  counts="$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$venv/pytest.log" | tr -d '=' | paste -sd '+')"
  summary+=("$name ($versions): $result, $counts [$((SECONDS - start)) s]")
done
echo "=== support matrix"
printf '  %s\n' "${summary[@]}"
exit $status
