"""Torsos: what turns an observation into the vector the networks' MLP heads read (`--torso`,
`--torso-shared`), for all three scripts. Not the algorithm: pi, V, mu, Q and q_hat are each
script's MLP heads (`Actor`, `Critic`, `QNet`), unchanged; a torso only feeds them.

    mlp          the observation flattened to one vector, no parameters: every network is the
                 MLP it always was (on vectors, flattening is no operation at all)
    minatar-cnn  the convolution of MinAtar's own network (Young & Tian 2019, minatar/examples/
                 AC_lambda.py), as in CleanRL's ppo_minatar.py of Rejax's benchmarks: 16 filters
                 3 x 3, stride 1, valid padding, ReLU; 8 x 8 x 16 = 1,024 features on a 10 x 10 grid
    nature-cnn   the BPO reference's featurizer (common/layers.py NatureCNN), Nature-DQN's
                 convolutions (Mnih et al. 2015): 32 filters 8 x 8 stride 4, 64 4 x 4 stride 2,
                 64 3 x 3 stride 1, valid padding, ReLU after each; images of at least 36 x 36
    auto         minatar-cnn for MinAtar's grids (and any image below nature-cnn's 36 x 36),
                 nature-cnn for larger images, mlp for vectors

Both CNNs end in the flattened feature maps (no dense layer: the heads' hidden layers,
`--hidden-sizes`, follow, as the reference's actor and critic follow its featurizer). Images are
[height, width, channels] (channels last) with values in [0, 1] (envs/: MinAtar's 0/1 grids); the
reference's featurizer takes stacks of grayscale frames channels first in 0..255, transposes them
and divides by 255, which makes the same input. Weights are initialised as the heads' hidden layers
(`--kernel-init`: orthogonal with gain sqrt 2, or lecun_normal, the reference's), biases at 0.

Which parameters, and which gradients reach them:
- `--torso-shared` (the default, the reference's choice): one CNN, `params["torso"]`, feeds the
  heads of pi and V (and in BPO mu, Q and q_hat). Only the PPO loss of pi and V (eq. 12)
  differentiates it, through both heads; Q's and q_hat's FQE (eq. 13) and mu's loss (eq. 14, 15)
  read its features as fixed inputs. So the representation pi and V act and bootstrap on is never
  moved by the variance rewards' regression or by mu, and FQE and the mu phase compute features
  once per phase, not once per minibatch. The reference does the same: its `featurizer_state` is
  updated only in PPO's `_one_update`, with the actor and critic losses' gradients; its FQE and mu
  updates apply the featurizer without differentiating it. (It gives the featurizer, actor and
  critic each their own Adam and gradient-norm clipping; here one Adam and one global-norm
  clipping cover pi, V and the torso together, as they cover pi and V.)
- `--no-torso-shared`: every network has a CNN of its own inside its parameters (pi's and mu's,
  V's, Q's and q_hat's, and the Q heads' target networks copy theirs), trained by that network's
  loss alone; mu's starts as a copy of pi's, as the rest of mu does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

TORSOS = ("mlp", "minatar-cnn", "nature-cnn", "auto")
# Nature-DQN's valid convolutions (8/4, 4/2, 3/1) need 36 pixels a side: (36 - 8) / 4 + 1 = 8,
# (8 - 4) / 2 + 1 = 3, 3 - 3 + 1 = 1.
NATURE_MIN_SIZE = 36


def _kernel_init(kernel_init: str):
    return nn.initializers.orthogonal(np.sqrt(2)) if kernel_init == "orthogonal" else nn.initializers.lecun_normal()


def _images(x, convolutions):
    """convolutions applied to the last three axes of x ([..., height, width, channels]), the
    result flattened: [..., features]."""
    lead = x.shape[:-3]
    x = convolutions(x.reshape((-1, *x.shape[-3:])))
    return x.reshape((*lead, -1))


class MinAtarCNN(nn.Module):
    """MinAtar's convolution: 16 filters 3 x 3, stride 1, valid, ReLU; flattened."""

    kernel_init: str = "orthogonal"

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(16, (3, 3), strides=(1, 1), padding="VALID", kernel_init=_kernel_init(self.kernel_init))
        return _images(x, lambda x: nn.relu(conv(x)))


class NatureCNN(nn.Module):
    """Nature-DQN's convolutions, as the BPO reference's featurizer: 32 8x8/4, 64 4x4/2, 64 3x3/1,
    valid, ReLU after each; flattened."""

    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, x):
        init = _kernel_init(self.kernel_init)

        def convolutions(x):
            for features, size, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
                x = nn.relu(
                    nn.Conv(features, (size, size), strides=(stride, stride), padding="VALID", kernel_init=init)(x)
                )
            return x

        return _images(x, convolutions)


class WithTorso(nn.Module):
    """A network with a torso of its own (--no-torso-shared): head(torso(obs), ...)."""

    torso: nn.Module
    head: nn.Module

    @property
    def action_spec(self):  # the head's (an Actor's), for code that reads actor.action_spec
        return self.head.action_spec

    def __call__(self, obs, *args):
        return self.head(self.torso(obs), *args)


def is_image(obs_shape) -> bool:
    """[height, width, channels]: what envs/ keeps unflattened (MinAtar's grids)."""
    return len(obs_shape) == 3


def resolve(kind: str, obs_shape) -> str:
    """The torso `kind` names for observations of obs_shape: auto decided, the others as given."""
    if kind not in TORSOS:
        raise ValueError(f"--torso {kind!r}: choose one of {', '.join(TORSOS)}")
    if kind != "auto":
        return kind
    if not is_image(obs_shape):
        return "mlp"
    return "nature-cnn" if min(obs_shape[:2]) >= NATURE_MIN_SIZE else "minatar-cnn"


def check(kind: str, env_id: str, obs_shape) -> str | None:
    """A one-line ValueError where the torso cannot read these observations; for auto, the line
    that says what it chose (None otherwise)."""
    chosen = resolve(kind, obs_shape)
    shape = " x ".join(map(str, obs_shape))
    if chosen != "mlp" and not is_image(obs_shape):
        raise ValueError(
            f"--torso {kind} needs image observations [height, width, channels]; {env_id}'s are vectors of "
            f"{math.prod(obs_shape)} (use --torso mlp)"
        )
    if chosen == "nature-cnn" and min(obs_shape[:2]) < NATURE_MIN_SIZE:
        raise ValueError(
            f"--torso nature-cnn needs images of at least {NATURE_MIN_SIZE} x {NATURE_MIN_SIZE} (Nature-DQN's "
            f"valid 8x8/4, 4x4/2, 3x3/1 convolutions); {env_id}'s are {shape} (use --torso minatar-cnn)"
        )
    if kind == "auto" and is_image(obs_shape):
        return f"{env_id} has image observations ({shape}): --torso auto uses {chosen}"
    return None


class Torso(NamedTuple):
    """The torso of a run: `features` gives the heads' input, `network` a head with a torso of its own."""

    kind: str  # mlp, minatar-cnn or nature-cnn (auto resolved)
    shared: bool  # one CNN's parameters, params["torso"], for every network
    cnn: nn.Module | None  # the CNN (None for mlp)
    obs_ndim: int  # the observation's axes: 1 for a vector, 3 for an image

    def init(self, key, obs_shape) -> dict:
        """{"torso": the shared CNN's parameters}, or {} (mlp, or a torso per network)."""
        if self.cnn is None or not self.shared:
            return {}
        return {"torso": self.cnn.init(key, jnp.zeros(obs_shape))}

    def shared_params(self, params: dict) -> dict:
        """params' entry of the shared CNN, {"torso": ...}, or {}: what the PPO update trains beside pi and V."""
        return {"torso": params["torso"]} if self.cnn is not None and self.shared else {}

    def features(self, params: dict, obs):
        """What the heads read at (normalised) observations [..., *obs_shape]: mlp, the observation
        flattened to [..., size]; a shared CNN, its features with params["torso"]; a CNN per network,
        the observation itself (each network applies its own). Differentiated only where a loss
        calls it with the parameters it differentiates (the PPO loss, for a shared CNN)."""
        if self.cnn is None:
            return obs if self.obs_ndim == 1 else obs.reshape((*obs.shape[: obs.ndim - self.obs_ndim], -1))
        return self.cnn.apply(params["torso"], obs) if self.shared else obs

    def network(self, head: nn.Module) -> nn.Module:
        """head itself, or (a CNN per network) head with a CNN of its own."""
        return WithTorso(self.cnn.clone(), head) if self.cnn is not None and not self.shared else head


def make(kind: str, shared: bool, obs_shape, kernel_init: str = "orthogonal") -> Torso:
    """The torso of `kind` (auto resolved) for observations of obs_shape; bad input raises ValueError."""
    kind = resolve(kind, obs_shape)
    cnn = {"mlp": None, "minatar-cnn": MinAtarCNN(kernel_init), "nature-cnn": NatureCNN(kernel_init)}[kind]
    return Torso(kind, shared, cnn, len(obs_shape))
