"""Compile time with and without the persistent compilation cache (issue 4 part 7).

Runs the same ``jaxrl train`` command twice in fresh processes with an empty cache
directory (``JAXRL_COMPILE_CACHE``), then once more with the cache off, and prints the
``compile_seconds`` each run's ``summary.json`` reports. The second run loads its programs
from the cache instead of compiling them.

    python experiments/benchmarks/compile_cache.py --algo ppo --env CartPole-v1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def one_run(args, cache: str, run_dir: Path) -> float:
    cmd = [
        sys.executable, "-m", "jaxrl", "train", args.algo, "--env", args.env, "--quiet",
        "--num-seeds", str(args.num_seeds), "--total-timesteps", str(args.total_timesteps),
        "--checkpoint-every", "0", "--run-dir", str(run_dir),
    ]  # fmt: skip
    env = dict(os.environ, JAXRL_COMPILE_CACHE=cache)
    subprocess.run(cmd, check=True, env=env)
    return json.loads((run_dir / "summary.json").read_text())["compile_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="ppo")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--num-seeds", type=int, default=8)
    p.add_argument("--total-timesteps", type=int, default=100_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold = one_run(args, str(tmp / "cache"), tmp / "cold")
        warm = one_run(args, str(tmp / "cache"), tmp / "warm")
        off = one_run(args, "off", tmp / "off")
        files = sum(1 for _ in (tmp / "cache").rglob("*") if _.is_file())
    print(
        json.dumps(
            {
                "algo": args.algo,
                "env": args.env,
                "num_seeds": args.num_seeds,
                "compile_seconds_cold_cache": round(cold, 2),
                "compile_seconds_warm_cache": round(warm, 2),
                "compile_seconds_cache_off": round(off, 2),
                "speedup_warm_vs_cold": round(cold / warm, 2),
                "cache_files": files,
            }  # fmt: skip
        )
    )


if __name__ == "__main__":
    main()
