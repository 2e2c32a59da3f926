"""Prioritised replay on the Blind Cliffwalk (Schaul et al. 2016, arXiv:1511.05952, §3.1, Fig. 1).

The Blind Cliffwalk has ``n`` states in a row and two actions: "right" moves one state on,
"wrong" ends the episode; the one reward, 1, is for "right" in the last state. A random
policy reaches state ``i`` in one episode in ``2^-i``, so a replay memory filled by random
episodes holds the rewarding transition once among ~``2^(n+1)`` and the transitions that
must carry its value back ever more often towards the start. Schaul et al. show that with
uniform replay the number of updates a tabular Q-learner needs grows with the memory size
(exponentially in ``n``), and that prioritising by TD error cuts it by orders of magnitude.

**Setup here.** The memory holds the transitions of all ``2^n`` action sequences from the
start state (each until its first "wrong", or the reward): ``(i, right)`` and
``(i, wrong)`` ``2^(n-1-i)`` times each, ``2 (2^n - 1)`` transitions, all added at once to
:func:`jaxrl.replay.buffers.prioritised_flat_buffer` (capacity = the memory; new items get
the largest priority). Tabular Q-learning from ``Q = 0``, step size ``--lr``, discount
``γ = 1 - 1/n``, one transition per update (batch 1), no importance weights (the paper's
Blind Cliffwalk learner has none); after each update the transition's priority is set to
``|δ| + 1e-4`` (computed before the update, as the learner does). Priority exponent
``α = 0`` is uniform replay; ``α > 0`` proportional prioritisation. A run ends when the
mean squared error of ``Q`` against the true ``Q*`` (``Q*(i, right) = γ^(n-1-i)``,
``Q*(i, wrong) = 0``) falls below ``--tol`` times its initial value; its score is the
number of updates that took (``--max-updates`` if it never did). Seeds are sampling keys,
vmapped in one ``lax.while_loop`` per ``(n, α)``.

    python experiments/per/blind_cliffwalk.py --sizes 4,6,8,10,12 --alphas 0,0.6,1 \\
        --seeds 16 --json experiments/per/results_blind_cliffwalk.json \\
        --plot experiments/per/blind_cliffwalk.png
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.replay import buffers

RIGHT, WRONG = 1, 0
PRIORITY_EPS = 1e-4


def memory(n: int) -> dict[str, np.ndarray]:
    """Every transition of the ``2^n`` action sequences: ``state, action, reward, next_state,
    done``, each ``[2 (2^n - 1)]``, grouped by state (order does not change sampling)."""
    rows = []
    for i in range(n):
        copies = 2 ** (n - 1 - i)
        last = i == n - 1
        rows += [(i, RIGHT, float(last), min(i + 1, n - 1), last)] * copies
        rows += [(i, WRONG, 0.0, i, True)] * copies
    cols = list(zip(*rows, strict=True))
    names = ("state", "action", "reward", "next_state", "done")
    dtypes = (np.int32, np.int32, np.float32, np.int32, np.bool_)
    return {k: np.asarray(c, d) for k, c, d in zip(names, cols, dtypes, strict=True)}


def true_q(n: int) -> np.ndarray:
    """``Q* [n, 2]``: ``γ^(n-1-i)`` for right, 0 for wrong, ``γ = 1 - 1/n``."""
    gamma = 1.0 - 1.0 / n
    q = np.zeros((n, 2), np.float32)
    q[:, RIGHT] = gamma ** (n - 1 - np.arange(n))
    return q


def updates_to_learn(n: int, alpha: float, keys: jax.Array, lr: float, tol: float, cap: int):
    """Updates each seed needs until ``MSE(Q, Q*) <= tol MSE(0, Q*)`` ``[S]`` (int32; ``cap``
    if it never gets there), one compiled ``while_loop`` vmapped over ``keys [S]``."""
    mem = memory(n)
    size = len(mem["state"])
    buf = buffers.prioritised_flat_buffer(
        capacity=size, batch_size=1, min_size=1, priority_exponent=alpha
    )
    q_star = jnp.asarray(true_q(n))
    gamma = 1.0 - 1.0 / n
    target_mse = tol * jnp.mean(q_star**2)

    def one(key):
        item = jax.tree.map(lambda x: x[0], mem)
        state = buf.add(buf.init(item), jax.tree.map(jnp.asarray, mem))
        q = jnp.zeros((n, 2), jnp.float32)

        def learned(q):
            return jnp.mean((q - q_star) ** 2) <= target_mse

        def cond(c):
            _, q, _, t = c
            return jnp.logical_and(jnp.logical_not(learned(q)), t < cap)

        def body(c):
            state, q, key, t = c
            key, k = jax.random.split(key)
            sample = buf.sample(state, k)
            tr = jax.tree.map(lambda x: x[0], sample.experience)
            bootstrap = jnp.where(tr["done"], 0.0, gamma * jnp.max(q[tr["next_state"]]))
            delta = tr["reward"] + bootstrap - q[tr["state"], tr["action"]]
            q = q.at[tr["state"], tr["action"]].add(lr * delta)
            state = buf.set_priorities(state, sample.indices, jnp.abs(delta)[None] + PRIORITY_EPS)
            return state, q, key, t + 1

        _, _, _, t = jax.lax.while_loop(cond, body, (state, q, key, jnp.int32(0)))
        return t

    return jax.jit(jax.vmap(one))(keys), size


def log_slope(sizes, updates) -> float:
    """Slope of ``log(median updates)`` against ``log(memory size)`` between the two largest."""
    med = [np.median(u) for u in updates[-2:]]
    return float(np.log(med[1] / med[0]) / np.log(sizes[-1] / sizes[-2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,6,8,10,12", help="numbers of states n")
    parser.add_argument("--alphas", default="0,0.6,1", help="priority exponents (0: uniform)")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.25)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max-updates", type=int, default=2**23)
    parser.add_argument("--json", help="write the per-seed update counts here")
    parser.add_argument("--plot", help="write the figure (PNG) here")
    args = parser.parse_args()
    ns = [int(x) for x in args.sizes.split(",")]
    alphas = [float(x) for x in args.alphas.split(",")]
    keys = jax.random.split(jax.random.key(0), args.seeds)
    out = {"lr": args.lr, "tol": args.tol, "max_updates": args.max_updates, "runs": {}}
    sizes = []
    for n in ns:
        for alpha in alphas:
            t0 = time.time()
            updates, size = updates_to_learn(
                n, alpha, keys, args.lr, args.tol, args.max_updates
            )
            updates = np.asarray(updates)
            out["runs"][f"n={n}/alpha={alpha:g}"] = {
                "n": n, "alpha": alpha, "memory": size, "updates": updates.tolist(),
                "wall_s": time.time() - t0,
            }  # fmt: skip
            capped = int(np.sum(updates >= args.max_updates))
            print(
                f"n={n:2d} memory {size:6d} α={alpha:g}: median updates {np.median(updates):10.0f}"
                f" (IQR {np.percentile(updates, 25):.0f}-{np.percentile(updates, 75):.0f}"
                f"{f', {capped} capped' if capped else ''}) {time.time() - t0:.0f} s",
                flush=True,
            )
        sizes.append(size)
    out["summary"] = {}
    for alpha in alphas:
        ups = [np.asarray(out["runs"][f"n={n}/alpha={alpha:g}"]["updates"]) for n in ns]
        out["summary"][f"alpha={alpha:g}"] = {"log_log_slope_last_two": log_slope(sizes, ups)}
        print(f"α={alpha:g}: log-log slope between the two largest memories "
              f"{log_slope(sizes, ups):.2f}")  # fmt: skip
    uniform = np.log10(np.asarray(out["runs"][f"n={ns[-1]}/alpha=0"]["updates"], np.float64))
    for alpha in alphas[1:]:
        per = np.log10(np.asarray(out["runs"][f"n={ns[-1]}/alpha={alpha:g}"]["updates"], float))
        diff = uniform.mean() - per.mean()
        se = np.sqrt(uniform.var(ddof=1) / uniform.size + per.var(ddof=1) / per.size)
        out["summary"][f"alpha={alpha:g}"]["log10_uniform_over_per"] = {"diff": diff, "se": se}
        print(f"n={ns[-1]}: log10(uniform / α={alpha:g}) = {diff:.2f} ± {se:.2f} s.e. "
              f"(a factor {10**diff:.1f})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.plot:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for alpha in alphas:
            ups = [out["runs"][f"n={n}/alpha={alpha:g}"]["updates"] for n in ns]
            med = [np.median(u) for u in ups]
            lo = [np.percentile(u, 25) for u in ups]
            hi = [np.percentile(u, 75) for u in ups]
            label = "uniform" if alpha == 0 else f"proportional, α={alpha:g}"
            ax.plot(sizes, med, marker="o", label=label)
            ax.fill_between(sizes, lo, hi, alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel="transitions in replay memory",
               ylabel="updates until learned (median, IQR)",
               title=f"Blind Cliffwalk, {args.seeds} seeds")  # fmt: skip
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
