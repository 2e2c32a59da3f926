"""Run 11 of RESULTS_metagrad.md: best chain 4, the test against its controls, per seed set.

The JSON files here are ``metagrad_ppo.py --out`` results: ``test_c{chain}_k{key}``,
``ctrl_{ascent,random}_k{key}`` and ``dev_{meta_lr}_{outer_loss}``.

    python experiments/meta/results_metagrad_run11/summarise.py
"""

import json
from math import comb
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def load(label, k):
    name = f"test_c4_k{k}.json" if label == "test" else f"ctrl_{label}_k{k}.json"
    return json.loads((HERE / name).read_text())


def fisher_one_sided(a, n1, b, n2):
    """P(X >= a) for X hypergeometric: a successes of a+b in the first group of n1."""
    K, N = a + b, n1 + n2
    return sum(comb(K, x) * comb(N - K, n1 - x) for x in range(a, min(K, n1) + 1)) / comb(N, n1)


for keys in ((1, 2), (3, 4), (1, 2, 3, 4)):
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
                f"one-sided Fisher p = {fisher_one_sided(t, n, x, n):.4f}"
            )
    for a, b in (("meta-from-default", "fixed-default"), ("meta", "fixed-start")):
        for i, lab in ((1, "all-update mean"), (0, "final")):
            x, y = res["test", a][i], res["test", b][i]
            d = x.mean() - y.mean()
            se = np.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
            print(f"  {a} - {b}, {lab}: {d:+.4f} ± {se:.4f} ({d / se:+.2f} SE)")
