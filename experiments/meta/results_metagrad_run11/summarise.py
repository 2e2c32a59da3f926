"""Run 11 of RESULTS_metagrad.md: best chain 4, the test against its controls, per seed set.

The JSON files here are ``metagrad_ppo.py --out`` results: ``test_c{chain}_k{key}``,
``ctrl_{ascent,random}_k{key}`` and ``dev_{meta_lr}_{outer_loss}``.

    python experiments/meta/results_metagrad_run11/summarise.py
"""

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from jaxrl.logger.stats import mean_difference

HERE = Path(__file__).parent


def load(label, k):
    name = f"test_c4_k{k}.json" if label == "test" else f"ctrl_{label}_k{k}.json"
    return json.loads((HERE / name).read_text())


def fisher_one_sided(a: int, b: int, n: int) -> float:
    """One-sided Fisher exact p that ``a`` successes of ``n`` exceed ``b`` of ``n``."""
    return stats.fisher_exact([[a, n - a], [b, n - b]], alternative="greater").pvalue


def tables(keys: tuple[int, ...]) -> None:
    """Every chain-4 arm on the seed sets ``keys``: finals, counts, Fisher tests, SEs."""
    print("keys", keys)
    res = {}
    for label in ("test", "ascent", "random"):
        for a in ("meta-from-default", "meta", "fixed-default", "fixed-start"):
            fin = np.concatenate([load(label, k)[a]["per_seed"] for k in keys])
            auc = np.concatenate([load(label, k)[a]["auc_per_seed"] for k in keys])
            res[label, a] = (fin, auc)
            if label == "test" or a.startswith("meta"):
                print(
                    f"  {label:6s} {a:18s} final {fin.mean():.4f} ± {fin.std():.4f} "
                    f"auc {auc.mean():.4f}  on the 1.1 chain (final > 1.05): "
                    f"{(fin > 1.05).sum()}/{fin.size}"
                )
    for a in ("meta-from-default", "meta"):
        t = (res["test", a][0] > 1.05).sum()
        n = res["test", a][0].size
        for c in ("ascent", "random"):
            x = (res[c, a][0] > 1.05).sum()
            print(
                f"  {a}: descent {t}/{n} vs {c} {x}/{n}: "
                f"one-sided Fisher p = {fisher_one_sided(t, x, n):.4f}"
            )
    for a, b in (("meta-from-default", "fixed-default"), ("meta", "fixed-start")):
        for i, lab in ((1, "all-update mean"), (0, "final")):
            d, se = mean_difference(res["test", a][i], res["test", b][i])
            print(f"  {a} - {b}, {lab}: {d:+.4f} ± {se:.4f} ({d / se:+.2f} SE)")


def plot(path: Path) -> None:
    """Mean training return per block of 25 updates, chain 4, keys 1-4 (32 seeds per arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    arms = [
        ("test", "fixed-default", "fixed default (0.99, 0.95)", "k", "-"),
        ("test", "fixed-start", "fixed (0.999, 1.0)", "0.5", "-"),
        ("test", "meta-from-default", "meta from default", "C0", "-"),
        ("ascent", "meta-from-default", "meta from default, ascent", "C0", ":"),
        ("random", "meta-from-default", "meta from default, random sign", "C0", "--"),
        ("test", "meta", "meta from (0.999, 0.995)", "C1", "-"),
        ("random", "meta", "meta from (0.999, 0.995), random sign", "C1", "--"),
    ]
    for label, arm, name, color, style in arms:
        runs = [load(label, k)[arm] for k in (1, 2, 3, 4)]
        curve = np.mean([r["curve_mean"] for r in runs], axis=0)
        x = (np.arange(curve.size) + 0.5) * runs[0]["curve_every"]
        ax.plot(x, curve, color=color, linestyle=style, label=name)
    ax.set_xlabel("PPO update (512 env steps each)")
    ax.set_ylabel("mean episode return (optimum 1.1)")
    ax.set_title("DiscountingChain-bsuite, bonus on the 100-step chain (32 seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    for keys in ((1, 2), (3, 4), (1, 2, 3, 4)):
        tables(keys)
    if "--plot" in sys.argv:
        plot(HERE / "chain4_curves.png")
