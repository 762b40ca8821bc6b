"""bpo_traj.py is bpo.py with another estimator: a line-by-line diff of the two files may touch only
the named regions below, so a change made to one copy of the shared algorithm and not the other
fails here. To change the algorithm, change both files the same way."""

import ast
import difflib
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Where bpo_traj.py may differ from bpo.py: a definition's qualified name, or (name, a call or
# assignment inside it) where only that statement may differ.
ALLOWED = {
    "<docstring>",  # the module docstring: what the estimator is, the examples
    "vtrace",  # the estimator itself (bpo_traj.py: trajectory_clipped_returns), with its section header
    "trajectory_clipped_returns",
    "probe_clipped_weight",  # the variance probe's clipped weight follows the estimator's clipping
    ("make_train.iteration", "vtrace"),  # the estimator's call, step 2
    ("make_train.iteration", "trajectory_clipped_returns"),
    ("variance_probe.segments", "carry"),  # the clipped weight's initial carry
    "METRIC_COLUMNS",  # bpo_traj.py's effective_horizon
    "Args",  # the docstrings of gae_lambda, clip_c and the defaults' add-on
    "PRESETS",  # the _traj add-ons
    "SUITE_PRESETS",
    "run",  # the algorithm's name in the outputs
}


def regions(source: str) -> list:
    """For every line of `source` (1-based index), where it is: the qualified name of the innermost
    definition or module-level assignment holding it, and the innermost statement inside a
    function that holds it (its called function's or assigned name's), or the next definition for
    lines between definitions (comments, section headers)."""
    tree = ast.parse(source)
    n = len(source.splitlines())
    where: list = [None] * (n + 2)

    def statement_name(node):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            return node.targets[0].id
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
                return sub.func.id
        return None

    def visit(node, qual):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                name = f"{qual}.{child.name}" if qual else child.name
                for line in range(child.lineno - len(child.decorator_list), child.end_lineno + 1):
                    where[line] = name
                visit(child, name)
            elif qual and isinstance(child, ast.stmt) and not isinstance(child, (ast.If, ast.For, ast.With)):
                for line in range(child.lineno, child.end_lineno + 1):
                    where[line] = (qual, statement_name(child))
            elif not qual and isinstance(child, (ast.Assign, ast.AnnAssign)):
                target = child.targets[0] if isinstance(child, ast.Assign) else child.target
                for line in range(child.lineno, child.end_lineno + 1):
                    where[line] = getattr(target, "id", None)
            elif not qual and isinstance(child, ast.Expr) and child is tree.body[0]:
                for line in range(child.lineno, child.end_lineno + 1):
                    where[line] = "<docstring>"
            elif qual:
                visit(child, qual)

    visit(tree, "")
    following = None  # lines outside every definition: the next definition's
    for line in range(n, 0, -1):
        if where[line] is None:
            where[line] = following
        elif not isinstance(where[line], tuple):
            following = where[line].split(".")[0]
    return where


def differing_regions(bpo_source: str, traj_source: str) -> set:
    """The regions (of either file) that a line diff of the two sources touches."""
    a, b = bpo_source.splitlines(), traj_source.splitlines()
    where_a, where_b = regions(bpo_source), regions(traj_source)
    touched = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        touched |= {where_a[i + 1] for i in range(i1, i2)} | {where_b[j + 1] for j in range(j1, j2)}
        if i1 == i2:  # a pure insertion: the region of the line before it counts too
            touched.add(where_a[i1] if i1 else "<docstring>")
    return touched


def outside(touched: set) -> set:
    """The touched regions that ALLOWED does not name: a definition named there covers everything
    inside it; a (definition, statement) pair covers that statement alone."""

    def allowed(region):
        if region in ALLOWED:
            return True
        qual = region[0] if isinstance(region, tuple) else region
        parts = (qual or "").split(".")
        return any(".".join(parts[:k]) in ALLOWED for k in range(1, len(parts) + 1))

    return {r for r in touched if not allowed(r)}


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_bpo_traj_differs_from_bpo_only_in_the_named_regions():
    touched = differing_regions(read("bpo.py"), read("bpo_traj.py"))
    assert not outside(touched), f"bpo_traj.py differs from bpo.py outside the named regions: {outside(touched)}"
    assert {"vtrace", "trajectory_clipped_returns", ("make_train.iteration", "vtrace")} <= touched


def test_the_check_catches_a_change_to_one_copy():
    bpo, traj = read("bpo.py"), read("bpo_traj.py")
    for old, new in [
        ("q_hat floored at q_hat_floor and", "q_hat floored at 1e-5 and"),  # update_mu's docstring
        ("jnp.maximum(q, lo))", "jnp.maximum(q, 1e-5))"),  # q_hat_for_mu's code
        ("clip_coef = jnp.where(args.anneal_clip", "clip_coef = 0.5 * jnp.where(args.anneal_clip"),  # ppo_update
        ("    return 2.0 * r * q - r**2", "    return 2.0 * r * q - 0.5 * r**2"),  # variance_reward
        ("k_act, k_env = jax.random.split(k)", "k_env, k_act = jax.random.split(k)"),  # the probe's step
        ("phase_lr = jnp.where(", "phase_lr = 0.5 * jnp.where("),  # iteration
    ]:
        assert traj.count(old) == 1, old
        touched = differing_regions(bpo, traj.replace(old, new))
        assert outside(touched), f"a change of {old!r} in bpo_traj.py alone went unnoticed"
