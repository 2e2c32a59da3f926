"""Dueling versus single-stream Q-networks on policy evaluation in the corridor
(Wang et al. 2016, arXiv:1511.06581, §4.1, Figs. 3-4).

Wang et al. evaluate a fixed policy with Expected-SARSA targets and measure the squared
error of the learned Q against the exact ``Q^π`` summed over every state and action. With 5
actions the two architectures converge at about the same speed; adding no-op actions (10,
20) makes the dueling network faster, because its value stream learns what the many
similar actions share.

**Corridor.** Three connected corridors in a Z: a left vertical section of 10 cells, a
horizontal one of 50, a right vertical one of 10 (70 cells). The agent starts at the bottom
of the left section; entering the last cell of the right section (top right) ends the
episode with reward +1, every other step gives 0. Actions: up, down, left, right (a move
into a wall stays put) and ``A - 4`` no-ops, ``A`` in {5, 10, 20}. Discount ``γ = 0.99``.
States are one-hot over the 69 non-terminal cells.

**Policy evaluated.** ``π`` = ε-greedy on ``Q*`` with ``ε = 0.001`` (the paper's); ``Q^π`` is
solved exactly (a 69-state linear system), and the score is
``SE = Σ_{s,a} (Q(s, a) - Q^π(s, a))²`` over the 69 states and ``A`` actions.

**Networks** (the paper's sizes). Single stream: ``QNetwork(A, hidden=(50, 50))``, three
layers. Dueling: ``MLP((50,))`` then ``QHead(A, stream_width=25, dueling=True)``: after the
shared 50 units, value and advantage streams of 25 units each, ``Q = V + A - mean A``. ReLU.

**Learning.** Expected SARSA (``rlax.expected_sarsa`` with ``π``'s probabilities at ``s'``),
squared loss, a target network copied every ``--target-period`` updates, Adam ``--lr``,
``--batch`` transitions per update. Where the transitions come from (``--data``):

* ``uniform``: ``(s, a)`` drawn uniformly over all states and actions, ``s'`` from the
  model: policy evaluation free of exploration, every action seen equally.
* ``on_policy``: ``--batch`` episodes run ``π`` in parallel from the start cell, one step
  each per update (restarting at the goal): almost only the greedy action is ever taken.

The paper does not say which it used; ``uniform`` is the pre-registered main comparison.
Seeds (network init and sampling) are vmapped, one compiled program per
``(data, A, architecture)``.

    python experiments/dueling/corridor.py --seeds 8 --json experiments/dueling/results.json \\
        --plot experiments/dueling/corridor.png
"""

from __future__ import annotations

import argparse
import json
import time

from jaxrl.distributed import use_all_cpu_cores

use_all_cpu_cores()  # before anything starts JAX

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import rlax  # noqa: E402

from jaxrl.distributed import run_mesh, shard_runs  # noqa: E402
from jaxrl.networks import MLP  # noqa: E402
from jaxrl.networks.q import QHead, QNetwork  # noqa: E402

MOVES = ((0, 1), (0, -1), (-1, 0), (1, 0))  # up, down, left, right as (dx, dy)
GAMMA = 0.99
EPSILON = 0.001


def corridor_cells(vertical: int = 10, horizontal: int = 50) -> list[tuple[int, int]]:
    """The Z-shaped corridor's cells ``(x, y)`` in path order, start first, goal last."""
    left = [(0, y) for y in range(vertical)]
    middle = [(x, vertical) for x in range(horizontal)]
    right = [(horizontal - 1, vertical + 1 + y) for y in range(vertical)]
    return left + middle + right


def corridor(num_actions: int) -> dict[str, np.ndarray]:
    """The corridor as tables over the non-terminal states ``S = 69``: ``next_state [S, A]``
    (0 where ``done``), ``reward [S, A]``, ``done [S, A]``; the start is state 0."""
    if num_actions < len(MOVES) + 1:
        raise ValueError(f"num_actions must be >= {len(MOVES) + 1}, got {num_actions}")
    cells = corridor_cells()
    index = {c: i for i, c in enumerate(cells)}
    goal = len(cells) - 1
    num_states = goal
    next_state = np.zeros((num_states, num_actions), np.int32)
    reward = np.zeros((num_states, num_actions), np.float32)
    done = np.zeros((num_states, num_actions), bool)
    for s in range(num_states):
        x, y = cells[s]
        for a in range(num_actions):
            dx, dy = MOVES[a] if a < len(MOVES) else (0, 0)
            s2 = index.get((x + dx, y + dy), s)
            if s2 == goal:
                reward[s, a], done[s, a] = 1.0, True
            else:
                next_state[s, a] = s2
    return {"next_state": next_state, "reward": reward, "done": done}


def bellman_q(table: dict[str, np.ndarray], v: np.ndarray) -> np.ndarray:
    """``Q(s, a) = r + γ (1 - done) v(s')``: ``[S, A]`` from ``v [S]``."""
    return table["reward"] + GAMMA * (~table["done"]) * v[table["next_state"]]


def behaviour_probs(table: dict[str, np.ndarray]) -> np.ndarray:
    """``π(a | s)`` ``[S, A]``: ε-greedy on ``Q*`` (value iteration to convergence)."""
    v = np.zeros(table["reward"].shape[0])
    for _ in range(10_000):
        v_new = bellman_q(table, v).max(axis=1)
        if np.abs(v_new - v).max() < 1e-12:
            break
        v = v_new
    q_star = bellman_q(table, v)
    num_actions = q_star.shape[1]
    probs = np.full(q_star.shape, EPSILON / num_actions)
    probs[np.arange(len(v)), q_star.argmax(axis=1)] += 1.0 - EPSILON
    return probs


def true_q(table: dict[str, np.ndarray], probs: np.ndarray) -> np.ndarray:
    """Exact ``Q^π`` ``[S, A]``: solves ``v = r_π + γ P_π v`` for ``v [S]``."""
    num_states, num_actions = probs.shape
    p = np.zeros((num_states, num_states))
    live = probs * (~table["done"])
    np.add.at(p, (np.repeat(np.arange(num_states), num_actions), table["next_state"].ravel()),
              live.ravel())  # fmt: skip
    r_pi = (probs * table["reward"]).sum(axis=1)
    v = np.linalg.solve(np.eye(num_states) - GAMMA * p, r_pi)
    return bellman_q(table, v)


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """``x`` forward; its gradient multiplied by ``scale`` backward."""
    return x * scale + jax.lax.stop_gradient(x * (1.0 - scale))


class DuelingCorridorNet(nn.Module):
    """The paper's dueling network: ``MLP((50,))`` then value/advantage streams of 25.
    ``grad_scale``: the gradient entering the shared layer from the two streams is scaled by
    it (Wang et al. use ``1/√2`` on Atari; 1 leaves it alone)."""

    num_actions: int
    grad_scale: float = 1.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = scale_gradient(MLP((50,), "relu")(obs), self.grad_scale)
        return QHead(self.num_actions, stream_width=25, dueling=True)(x)


def network(arch: str, num_actions: int, grad_scale: float = 1.0) -> nn.Module:
    """``"single"``: ``QNetwork(A, hidden=(50, 50))``; ``"dueling"``: the paper's dueling."""
    if arch == "single":
        return QNetwork(num_actions, hidden=(50, 50))
    return DuelingCorridorNet(num_actions, grad_scale)


def make_run(table, probs, q_pi, arch: str, data: str, args):
    """A pure ``run(init_key, run_key) -> SE [1 + num_evals]`` for one seed (vmap it; jaxrl's
    orthogonal initialiser is safe to vmap on XLA:CPU, docs/design.md decision 9)."""
    num_states, num_actions = probs.shape
    net = network(arch, num_actions, args.dueling_grad_scale)
    eye = jnp.eye(num_states)
    nxt, rew, done = (jnp.asarray(table[k]) for k in ("next_state", "reward", "done"))
    probs_j, q_pi_j = jnp.asarray(probs), jnp.asarray(q_pi)
    log_probs = jnp.log(probs_j)
    opt = optax.adam(args.lr)
    if args.max_grad_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(args.max_grad_norm), opt)
    num_evals = args.updates // args.eval_every

    def squared_error(params):
        return ((net.apply(params, eye) - q_pi_j) ** 2).sum()

    def loss(params, target_params, s, a):
        q_tm1 = net.apply(params, eye[s])
        q_t = net.apply(target_params, eye[nxt[s, a]])
        discount = GAMMA * (1.0 - done[s, a])
        td = jax.vmap(rlax.expected_sarsa)(q_tm1, a, rew[s, a], discount, q_t, probs_j[nxt[s, a]])
        return 0.5 * jnp.mean(td**2)

    def sample(key, env_s):
        """Transitions ``(s, a)`` ``[B]`` and the episode states after them."""
        k_s, k_a = jax.random.split(key)
        if data == "uniform":
            s = jax.random.randint(k_s, (args.batch,), 0, num_states)
            a = jax.random.randint(k_a, (args.batch,), 0, num_actions)
            return s, a, env_s
        a = jax.random.categorical(k_a, log_probs[env_s])
        return env_s, a, jnp.where(done[env_s, a], 0, nxt[env_s, a])

    def update(carry, key):
        params, target_params, opt_state, env_s, step = carry
        s, a, env_s = sample(key, env_s)
        grads = jax.grad(loss)(params, target_params, s, a)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        step = step + 1
        target_params = optax.periodic_update(params, target_params, step, args.target_period)
        return (params, target_params, opt_state, env_s, step), None

    def evaluate_after_chunk(carry, keys):
        carry, _ = jax.lax.scan(update, carry, keys)
        return carry, squared_error(carry[0])

    def run(init_key, key):
        params = net.init(init_key, eye[:1])
        carry = (params, params, opt.init(params), jnp.zeros(args.batch, jnp.int32), jnp.int32(0))
        keys = jax.random.split(key, num_evals * args.eval_every)
        keys = keys.reshape(num_evals, args.eval_every, *keys.shape[1:])
        se0 = squared_error(params)
        _, se = jax.lax.scan(evaluate_after_chunk, carry, keys)
        return jnp.concatenate([se0[None], se])

    return run


def summary(se: np.ndarray) -> dict[str, list[float]]:
    """Per-seed scores from ``SE [seeds, 1 + num_evals]``: the mean of ``log10 SE`` over
    the evaluations after the first update chunk (area under the log curve: lower = faster),
    and the SE at a tenth, half and the end of the run."""
    log_se = np.log10(se[:, 1:])
    n = log_se.shape[1]
    return {
        "mean_log10_se": log_se.mean(axis=1).tolist(),
        "se_tenth": se[:, max(n // 10, 1)].tolist(),
        "se_half": se[:, n // 2].tolist(),
        "se_final": se[:, -1].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--data", nargs="+", default=["uniform", "on_policy"],
                        choices=["uniform", "on_policy"])  # fmt: skip
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="the base key: key(seed)")
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--target-period", type=int, default=100)
    parser.add_argument("--max-grad-norm", type=float, default=0.0, help="0: no clipping")
    parser.add_argument("--dueling-grad-scale", type=float, default=1.0,
                        help="gradient scale into the dueling net's shared layer")  # fmt: skip
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    if args.updates % args.eval_every:
        parser.error("--updates must be a multiple of --eval-every")

    k_init, k_run = jax.random.split(jax.random.key(args.seed))
    init_keys = jax.random.split(k_init, args.seeds)
    run_keys = jax.random.split(k_run, args.seeds)
    results = {"config": vars(args), "runs": []}
    for data in args.data:
        for num_actions in args.actions:
            table = corridor(num_actions)
            probs = behaviour_probs(table)
            q_pi = true_q(table, probs)
            for arch in ("single", "dueling"):
                t0 = time.time()
                run = make_run(table, probs, q_pi, arch, data, args)
                keys = shard_runs((init_keys, run_keys), run_mesh())
                se = np.asarray(jax.jit(jax.vmap(run))(*keys))
                scores = summary(se)
                results["runs"].append({"data": data, "actions": num_actions, "arch": arch,
                                        "se": se.tolist(), **scores})  # fmt: skip
                print(
                    f"{data:9s} A={num_actions:2d} {arch:7s}: mean log10 SE "
                    f"{np.mean(scores['mean_log10_se']):6.3f} ± "
                    f"{np.std(scores['mean_log10_se']) / np.sqrt(args.seeds):.3f}, SE at "
                    f"1/10 {np.median(scores['se_tenth']):.3g}, 1/2 "
                    f"{np.median(scores['se_half']):.3g}, end {np.median(scores['se_final']):.3g} "
                    f"(medians; initial {np.median(se[:, 0]):.3g}) [{time.time() - t0:.0f} s]",
                    flush=True,
                )
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
    if args.plot:
        plot(results, args)


def report(results: dict) -> None:
    """Per ``(data, A)``: the paired gap single − dueling in mean log10 SE and how many
    seeds the dueling network wins."""
    by = {(r["data"], r["actions"], r["arch"]): np.asarray(r["mean_log10_se"])
          for r in results["runs"]}  # fmt: skip
    for data, num_actions, arch in by:
        if arch != "single" or (data, num_actions, "dueling") not in by:
            continue
        gap = by[data, num_actions, "single"] - by[data, num_actions, "dueling"]
        print(
            f"{data:9s} A={num_actions:2d}: gap single − dueling {gap.mean():+.3f} ± "
            f"{gap.std() / np.sqrt(len(gap)):.3f} (log10 SE), dueling lower in "
            f"{int((gap > 0).sum())}/{len(gap)} seeds"
        )


def plot(results: dict, args) -> None:
    """Median SE against updates, one panel per ``(data, A)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = list(dict.fromkeys(r["data"] for r in results["runs"]))
    actions = list(dict.fromkeys(r["actions"] for r in results["runs"]))
    fig, axes = plt.subplots(len(datas), len(actions), figsize=(4 * len(actions),
                             3.2 * len(datas)), squeeze=False, sharey="row")  # fmt: skip
    for r in results["runs"]:
        ax = axes[datas.index(r["data"])][actions.index(r["actions"])]
        se = np.asarray(r["se"])
        x = np.arange(se.shape[1]) * args.eval_every
        ax.plot(x, np.median(se, axis=0), label=r["arch"])
        ax.fill_between(x, se.min(axis=0), se.max(axis=0), alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(f"{r['data']}, {r['actions']} actions")
        ax.set_xlabel("updates")
    for row in axes:
        row[0].set_ylabel("SE (median, min-max)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
