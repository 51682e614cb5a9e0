"""The wheel installs into a fresh venv and trains a step with no source tree on the path; it carries every data file."""

import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"

TRAIN_ONE_STEP = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    import trl_sgcd
    assert trl_sgcd.__file__.startswith(sys.prefix), trl_sgcd.__file__
    from trl_sgcd import ContrastCreditReference, SGCDGRPOTrainer
    from trl_sgcd.envs.offline_airline import OfflineAirlineEnv, make_dataset, offline_airline_reward
    from trl_sgcd.warm_start import offline_airline_base_model, offline_airline_rl_config

    model = offline_airline_base_model("base", hidden_size=64)
    config = offline_airline_rl_config(
        "out", max_steps=1, per_device_train_batch_size=4, num_generations=4, max_completion_length=32,
        max_tool_calling_iterations=1, max_resample_rounds=0, disable_tqdm=True,
    )
    trainer = SGCDGRPOTrainer(
        model=model, reward_funcs=offline_airline_reward, args=config, train_dataset=make_dataset("train", n=8),
        environment_factory=OfflineAirlineEnv, credit_reference=ContrastCreditReference(),
    )
    trainer.train()
    assert trainer.state.global_step == 1
    print("TRAINED", trl_sgcd.__file__)
    """
)


def _tracked_package_files() -> set[str]:
    out = subprocess.run(["git", "ls-files", "trl_sgcd"], cwd=ROOT, capture_output=True, text=True, check=True)
    return {line for line in out.stdout.splitlines() if line}


def test_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("trl_sgcd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = {f for f in _tracked_package_files() if not f.endswith(".py")} - names
    assert not missing, f"package data left out of the wheel: {sorted(missing)}"
    assert {f for f in _tracked_package_files() if f.endswith(".py")} <= names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", PURELIB], capture_output=True, text=True, check=True).stdout.strip())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], check=True, env=env
    )
    # then dependencies come from this interpreter's site-packages (a plain path line: its .pth files, including an
    # editable install of this repository, are not processed)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "run"
    work.mkdir()
    result = subprocess.run(
        [python, "-c", TRAIN_ONE_STEP], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "TRAINED" in result.stdout and str(ROOT) not in result.stdout
    cli = subprocess.run([env_dir / "bin" / "trl-sgcd", "--help"], cwd=work, env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "eval" in cli.stdout


def test_git_url_form_installs(tmp_path):
    """The README's `pip install "trl-sgcd @ git+URL"` form, with this repository's committed tree as the URL."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    site = subprocess.run([python, "-c", PURELIB], capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # setuptools for the build
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-build-isolation", "-q",
         "--ignore-installed",
         f"trl-sgcd @ git+file://{ROOT}"],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    files = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print('\\n'.join(str(f) for f in m.files('trl-sgcd')))"],
        capture_output=True, text=True, check=True, env=env, cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    installed = {f for f in files if f.startswith("trl_sgcd/") and "__pycache__" not in f}
    assert _tracked_package_files() <= installed
