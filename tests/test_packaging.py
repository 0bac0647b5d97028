"""telucodec installed from a wheel, used from another folder: the configs and the price table
ship inside the package and are found by name (no source checkout needed).

    .venv/bin/pytest tests/test_packaging.py -q
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import load_config, to_dict

REPO = Path(__file__).resolve().parent.parent

# Runs the CLI from the wheel's copy, printing where the code came from first.
FROM_WHEEL = ("import sys, pipeline; print(pipeline.__file__, flush=True); "
              "from jobs.cli import main; sys.exit(main(sys.argv[1:]))")
PRICE = ("from pipeline.config import load_config; from pipeline.runs.cost import worker_price; "
         "p = worker_price(load_config(['gpu'], ['cost.instance_type=g5.xlarge', 'train.use_gpu=true'])); "
         "print(p.usd_per_worker_hour, p.source)")


def test_a_wheel_install_finds_configs_and_prices_by_name_from_another_folder(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = tmp_path / "source"  # a copy: an in-tree build would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in ("pipeline", "data_prep", "jobs"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, cwd=tmp_path, capture_output=True)
    wheel = next(wheels.glob("telucodec-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    assert not (target / "configs").exists()  # only inside the package
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*argv: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", FROM_WHEEL, *argv], cwd=elsewhere, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        origin, *out = done.stdout.splitlines()
        assert Path(origin).is_relative_to(target), origin  # the wheel's copy, not the checkout
        return out

    for name in ("tiny", "gpu"):
        shown = json.loads("\n".join(run("config", "show", name, "--json")))
        checkout = load_config([REPO / "configs" / "base.yaml", REPO / "configs" / f"{name}.yaml"])
        assert shown == to_dict(checkout) != to_dict(load_config([REPO / "configs" / "base.yaml"]))

    done = subprocess.run([sys.executable, "-c", PRICE], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    usd, source = done.stdout.split(" ", 1)
    assert float(usd) > 0 and source.startswith("g5.xlarge on-demand")
