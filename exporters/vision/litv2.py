"""LITv2 ("Fast Vision Transformers with HiLo Attention", NeurIPS 2022) in plain PyTorch, channels-last.

A four-stage pyramid on (B, H, W, C) feature maps:

  image (B, 3, H, W) -> 4x4 patch embedding (conv stride 4 + LayerNorm)
  stage 1, 2: ConvFFN blocks only, no attention (LITv2's early stages)
  stage 3:    attention (`method`, below) + ConvFFN blocks
  stage 4:    plain multi-head self-attention + ConvFFN blocks (LITv2: HiLo with window 1 = MSA)
  a patch merge (2x2, stride 2, channels x2) after stages 1-3
  -> LayerNorm -> global average pool -> Linear head -> logits (B, num_classes)

ConvFFN: Linear -> 3x3 depthwise conv -> GELU -> Linear (LITv2's DWMlp), pre-norm residual blocks.
H and W must be multiples of 32 (four strides of 2 after the 4x4 embedding): no padding; a `ShapeError`
says so. Under `torch.onnx.export(dynamic_shapes=...)` they stay symbolic (`to_onnx`).

`method` changes stage 3's attention only, everything else is the same network:
  hilo   edgekit::HiLoAttention (alpha of the heads Lo-Fi, the rest Hi-Fi windows of `window`);
  msa    plain multi-head self-attention (q, kv, proj: the same modules as stage 4);
  window local `window` x `window` attention only: the HiLo op with alpha 0 (one tested ONNX body, so
         the comparison changes the mechanism, not the implementation);
  sra    PVT's spatial-reduction attention: keys/values from a `window`-strided conv + LayerNorm.

Patch merging: LITv2's deformable token merging (DTM, `merge="dtm"`, the default): a 2x2 stride-2
deformable conv (offsets from a 2x2 stride-2 conv, zero-initialised) + BatchNorm + GELU. torchvision is
not a dependency (its 0.28.0 wheel for torch 2.13.0 is a CUDA build whose kernels do not load against the
CPU torch: "operator torchvision::nms does not exist"), so the deformable conv is written here with
`grid_sample` (bilinear, zero outside the map, as LITv2's DCN kernel); it exports to ONNX GridSample. `merge="conv"` is DTM without offsets (what
DTM is at initialisation): one ONNX Conv.

Weights: `load_weights` reads a local `.safetensors` file or LITv2's released `.pth` state dict (maybe
nested under "model"), weights only, and renames LITv2's parameters with `NAME_MAP` (a table).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.errors import InvalidAttributeError, ModelLoadError, ShapeError, first_line
from edgekit.interface import Interface, TensorSpec
from edgekit.runtime_ops import get_op
from edgekit.runtime_ops.attach import attach_functions
from edgekit.runtime_ops.hilo import INPUTS as HILO_INPUTS
from edgekit.runtime_ops.hilo import weight_shapes

from ..family import Family, Method
from ..registry import register

LITV2_CONFIGS = {
    "litv2-s": dict(embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24)),
    "litv2-m": dict(embed_dim=96, depths=(2, 2, 18, 2), heads=(3, 6, 12, 24)),
    "litv2-b": dict(embed_dim=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32)),
    "litv2-tiny": dict(embed_dim=16, depths=(1, 1, 2, 1), heads=(1, 2, 2, 4)),  # tests: stage 3 has 1 + 1 heads
}
DEFAULTS = dict(alpha=0.9, window=2, mlp_ratio=4, num_classes=1000, merge="dtm")  # LITv2's stage-3 ALPHA, LOCAL_WS
METHODS = ("hilo", "msa", "window", "sra")
STRIDE = 32  # image sides must be multiples of this

# LITv2 parameter name (regex) -> ours; the first matching row wins. Stage 4 is LITv2's HiLo with
# window 1, whose Lo-Fi layers are our plain MSA's.
NAME_MAP = (
    (r"^patch_embed\.proj\.", "patch_embed.proj."),
    (r"^patch_embed\.norm\.", "patch_embed.norm."),
    (r"^layers\.3\.blocks\.(\d+)\.attn\.l_q\.", r"stages.3.blocks.\1.attn.q."),
    (r"^layers\.3\.blocks\.(\d+)\.attn\.l_kv\.", r"stages.3.blocks.\1.attn.kv."),
    (r"^layers\.3\.blocks\.(\d+)\.attn\.l_proj\.", r"stages.3.blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.h_qkv\.", r"stages.\1.blocks.\2.attn.hi_qkv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.h_proj\.", r"stages.\1.blocks.\2.attn.hi_proj."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.l_q\.", r"stages.\1.blocks.\2.attn.lo_q."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.l_kv\.", r"stages.\1.blocks.\2.attn.lo_kv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.l_proj\.", r"stages.\1.blocks.\2.attn.lo_proj."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm1\.", r"stages.\1.blocks.\2.attn_norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm2\.", r"stages.\1.blocks.\2.ffn_norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.", r"stages.\1.blocks.\2.ffn.fc1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.", r"stages.\1.blocks.\2.ffn.dwconv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.", r"stages.\1.blocks.\2.ffn.fc2."),
    (r"^layers\.(\d+)\.downsample\.dconv\.conv_offset\.", r"stages.\1.merge.conv_offset."),
    (r"^layers\.(\d+)\.downsample\.dconv\.(weight|bias)$", r"stages.\1.merge.conv.\2"),
    (r"^layers\.(\d+)\.downsample\.norm_layer\.", r"stages.\1.merge.norm."),
    (r"^norm\.", "norm."),
    (r"^head\.", "head."),
)


# ----------------------------------------------------------------------------------------------------
# Layers. Every module takes and returns channels-last maps (B, H, W, C) unless it says otherwise.


class PatchEmbed(nn.Module):
    """4x4 patches -> embed_dim channels, LayerNorm."""

    def __init__(self, dim: int, patch: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(image).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


class Merge(nn.Module):
    """Halve H and W, double channels: 2x2 stride-2 conv, BatchNorm, GELU (DTM without offsets)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm2d(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.downsample(x.permute(0, 3, 1, 2))  # (B, 2C, H/2, W/2)
        return F.gelu(self.norm(y)).permute(0, 2, 3, 1)

    def downsample(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


class DTM(Merge):
    """LITv2's deformable token merging: each 2x2 conv tap samples at a learned offset."""

    def __init__(self, dim: int):
        super().__init__(dim)
        self.conv_offset = nn.Conv2d(dim, 2 * len(TAPS), kernel_size=2, stride=2)
        nn.init.zeros_(self.conv_offset.weight)  # as LITv2: DTM starts as the plain strided conv
        nn.init.zeros_(self.conv_offset.bias)

    def downsample(self, image: torch.Tensor) -> torch.Tensor:
        return deformable_merge(image, self.conv_offset(image), self.conv.weight, self.conv.bias)


TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # the 2x2 kernel's taps, row-major, as the offset channels


def deformable_merge(image: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """2x2 stride-2 deformable conv: tap (ky, kx) of output (i, j) reads (2i + ky + dy, 2j + kx + dx).

    offset (B, 8, H/2, W/2) holds (dy, dx) per tap; samples are bilinear with zeros outside the map.
    """
    B, C, H, W = image.shape
    Ho, Wo = offset.shape[2:]
    dy, dx = offset.view(B, len(TAPS), 2, Ho, Wo).unbind(2)  # each (B, 4, Ho, Wo)
    ky = torch.tensor([t[0] for t in TAPS]).view(1, -1, 1, 1)
    kx = torch.tensor([t[1] for t in TAPS]).view(1, -1, 1, 1)
    rows = 2 * torch.arange(Ho).view(1, 1, -1, 1) + ky + dy  # (B, 4, Ho, Wo) in pixels
    cols = 2 * torch.arange(Wo).view(1, 1, 1, -1) + kx + dx
    grid = torch.stack([(2 * cols + 1) / W - 1, (2 * rows + 1) / H - 1], dim=-1)  # grid_sample's [-1, 1]
    sampled = F.grid_sample(image, grid.view(B, -1, Wo, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B, C, 4*Ho, Wo)
    columns = sampled.view(B, C * len(TAPS), Ho * Wo)  # channel-major then tap, as weight.flatten(1)
    return (weight.flatten(1) @ columns).view(B, -1, Ho, Wo) + bias.view(1, -1, 1, 1)


MERGES = {"dtm": DTM, "conv": Merge}


class ConvFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear: the conv gives the FFN positional information."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(self.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H, W, hidden)
        return self.fc2(F.gelu(h))


def multi_head(q_tokens: torch.Tensor, kv_tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention of (B, N, C) queries over (B, M, 2C) keys|values; returns (B, N, C)."""
    B, N, C = q_tokens.shape
    q = q_tokens.view(B, N, heads, C // heads).transpose(1, 2)  # (B, heads, N, d)
    k, v = kv_tokens.view(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4)  # each (B, heads, M, d)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)


class MSA(nn.Module):
    """Plain multi-head self-attention (LITv2's stage 4: HiLo with window 1, all heads Lo-Fi)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(1, 2)  # (B, N, C)
        return self.proj(multi_head(self.q(tokens), self.kv(tokens), self.heads).view_as(x))


class SRA(nn.Module):
    """PVT's spatial-reduction attention: all heads global over keys/values of a strided-conv map."""

    def __init__(self, dim: int, heads: int, ratio: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, kernel_size=ratio, stride=ratio)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.norm(self.sr(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2))  # (B, M, C)
        out = multi_head(self.q(x.flatten(1, 2)), self.kv(reduced), self.heads)
        return self.proj(out.view_as(x))


class HiLo(nn.Module):
    """edgekit::HiLoAttention with its projections; a branch without heads has no layers."""

    LAYERS = ("hi_qkv", "hi_proj", "lo_q", "lo_kv", "lo_proj")  # LITv2's h_qkv, h_proj, l_q, l_kv, l_proj

    def __init__(self, dim: int, heads: int, alpha: float, window: int):
        super().__init__()
        self.attrs = dict(num_heads=heads, alpha=alpha, window=window)
        self.shapes = weight_shapes(dim, heads, alpha, window)
        for name in self.LAYERS:
            out_features, in_features = self.shapes[f"{name}_weight"]
            setattr(self, name, nn.Linear(in_features, out_features) if out_features else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = []
        for name in HILO_INPUTS[1:]:  # (hi_qkv_weight, hi_qkv_bias, ..., lo_proj_bias)
            layer, kind = name.rsplit("_", 1)
            module = getattr(self, layer)
            weights.append(getattr(module, kind) if module is not None else x.new_zeros(self.shapes[name]))
        return get_op("HiLoAttention")(x, *weights, **self.attrs)


def stage3_attention(method: str, dim: int, heads: int, alpha: float, window: int) -> nn.Module:
    """The one module that differs between the compared networks."""
    if method == "hilo":
        return HiLo(dim, heads, alpha, window)
    if method == "window":
        return HiLo(dim, heads, 0.0, window)
    if method == "msa":
        return MSA(dim, heads)
    if method == "sra":
        return SRA(dim, heads, window)
    raise InvalidAttributeError(f"unknown LITv2 method '{method}'; known: {', '.join(METHODS)}")


class Block(nn.Module):
    """Pre-norm residual block: optional attention, then ConvFFN."""

    def __init__(self, dim: int, mlp_ratio: float, attn: nn.Module | None):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim) if attn is not None else None
        self.attn = attn
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Stage(nn.Module):
    def __init__(self, blocks: list[Block], merge: Merge | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.merge(x) if self.merge is not None else x


class LITv2(nn.Module):
    def __init__(self, embed_dim: int, depths: tuple, heads: tuple, alpha: float = 0.9, window: int = 2,
                 mlp_ratio: float = 4, num_classes: int = 1000, method: str = "hilo", merge: str = "dtm"):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, depths=tuple(depths), heads=tuple(heads), alpha=alpha, window=window,
                           mlp_ratio=mlp_ratio, num_classes=num_classes, merge=merge)  # rebuilt per method
        dims = [embed_dim * 2 ** i for i in range(4)]
        attention = [lambda i: None, lambda i: None,
                     lambda i: stage3_attention(method, dims[2], heads[2], alpha, window),
                     lambda i: MSA(dims[3], heads[3])]
        self.method = method
        self.patch_embed = PatchEmbed(embed_dim)
        self.stages = nn.ModuleList(
            Stage([Block(dims[s], mlp_ratio, attention[s](i)) for i in range(depths[s])],
                  MERGES[merge](dims[s]) if s < 3 else None)
            for s in range(4))
        self.norm = nn.LayerNorm(dims[3])
        self.head = nn.Linear(dims[3], num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_exporting():
            check_image(image)
        x = self.patch_embed(image)  # (B, H/4, W/4, C)
        for stage in self.stages:
            x = stage(x)  # ... (B, H/32, W/32, 8C)
        return self.head(self.norm(x).mean(dim=(1, 2)))  # (B, num_classes)


def check_image(image: torch.Tensor) -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ShapeError(f"LITv2 wants images (B, 3, H, W), got shape {list(image.shape)}")
    if image.shape[2] % STRIDE or image.shape[3] % STRIDE:
        raise ShapeError(f"LITv2 wants H and W multiples of {STRIDE}, got {image.shape[2]}x{image.shape[3]}")


def init_weights(model: nn.Module) -> None:
    """LITv2's initialisation: truncated-normal Linear, unit LayerNorm, fan-out normal depthwise convs."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d) and m.groups > 1:
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
            nn.init.zeros_(m.bias)


def litv2(name: str = "litv2-s", method: str = "hilo", seed: int = 0, **overrides) -> LITv2:
    """A LITv2 from a config name, seeded random weights (the global RNG is left as it was)."""
    if name not in LITV2_CONFIGS:
        raise InvalidAttributeError(f"unknown LITv2 config '{name}'; known: {', '.join(LITV2_CONFIGS)}")
    if method not in METHODS:
        raise InvalidAttributeError(f"unknown LITv2 method '{method}'; known: {', '.join(METHODS)}")
    if overrides.get("merge", "dtm") not in MERGES:
        raise InvalidAttributeError(f"unknown LITv2 merge '{overrides['merge']}'; known: {', '.join(MERGES)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LITv2(**{**DEFAULTS, **LITV2_CONFIGS[name], **overrides}, method=method)
        init_weights(model)
    return model.eval()


# ----------------------------------------------------------------------------------------------------
# Weights and export.


def rename(name: str) -> str:
    """Our name for a LITv2 parameter name; other names (ours already) pass through."""
    for pattern, ours in NAME_MAP:
        if re.match(pattern, name):
            return re.sub(pattern, ours, name)
    return name


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a weights-only torch checkpoint (maybe under "model")."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the class it would have to import
        what = f"it pickles a {found[1]} object" if found else first_line(e, 120)
        raise ModelLoadError(f"{path}: refused by weights-only loading ({what}); if you trust the file, re-save "
                             "its tensors alone: torch.save(torch.load(p, weights_only=False)['model'], out)") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)] if isinstance(state, dict) else ["*"]
    if bad:
        raise ModelLoadError(f"{path}: not a state dict of tensors (first non-tensor entry: {bad[0]})")
    return state


def load_weights(model: LITv2, path: str | Path) -> LITv2:
    """Load LITv2-named or edgekit-named tensors; ModelLoadError names the first tensor that does not fit."""
    state = {rename(name): t for name, t in read_state_dict(path).items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                 f"{wrong[0]} has shape {list(state[wrong[0]].shape)}, expected {list(expected[wrong[0]].shape)}")
        raise ModelLoadError(f"{path} does not fit LITv2 ({model.method}): {first} ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, {len(wrong)} wrong shape)")
    model.load_state_dict(state)
    return model


def with_method(model: LITv2, method: str, **options) -> LITv2:
    """The same network with stage 3's attention swapped: every tensor whose name and shape fit is copied,
    so the methods differ in the mechanism alone (stage 3's attention weights, where they differ)."""
    other = LITv2(**{**model.config, **options}, method=method)
    own = model.state_dict()
    other.load_state_dict({k: v for k, v in own.items() if k in other.state_dict()
                           and other.state_dict()[k].shape == v.shape}, strict=False)
    return other.eval()


def dynamic_shapes() -> dict:
    """Symbolic batch, H and W for torch.export: H and W multiples of STRIDE (the four stride-2 merges)."""
    h, w = torch.export.Dim("h32", min=1, max=256), torch.export.Dim("w32", min=1, max=256)
    return {"image": {0: torch.export.Dim("batch", min=1, max=4096), 2: STRIDE * h, 3: STRIDE * w}}


# ----------------------------------------------------------------------------------------------------
# The family: task, methods, presets and the hooks the exporter calls.


@register("LITv2")
class LITv2Family(Family):
    """LITv2 image backbones with a 1000-class head; `--method` swaps stage 3's attention only."""

    task = "image-classification"
    kind = "vision"
    methods = {
        "hilo": Method("hilo", op="HiLoAttention", options=("alpha", "window"),
                       doc="edgekit::HiLoAttention: Hi-Fi window heads + Lo-Fi pooled global heads"),
        "msa": Method("msa", doc="plain multi-head self-attention (ONNX Attention)"),
        "window": Method("window", op="HiLoAttention", options=("window",), fixed={"alpha": 0.0},
                         doc="local window attention only (the HiLo op with alpha 0)"),
        "sra": Method("sra", options=("window",), schema="HiLoAttention",
                      doc="PVT's spatial-reduction attention: keys/values from a window-strided conv"),
    }
    presets = LITV2_CONFIGS
    default_method = "msa"

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> LITv2:
        return litv2(name, "hilo", seed=seed)

    @classmethod
    def load_weights(cls, model: LITv2, path: str) -> None:
        load_weights(model, path)

    @classmethod
    def interface(cls, model: LITv2, **_) -> Interface:
        image = TensorSpec("image", "float32", ("batch", 3, "height", "width"), doc="normalised RGB")
        logits = TensorSpec("logits", "float32", ("batch", model.config["num_classes"]))
        return Interface(task=cls.task, method="", inputs=(image,), outputs=(logits,),
                         multiples={"height": STRIDE, "width": STRIDE})

    @classmethod
    def prepare(cls, model: LITv2, method: str, options: dict, **_) -> LITv2:
        return with_method(model, method, **options)

    @classmethod
    def check_workload(cls, **_) -> dict[str, int]:
        return {"image_size": 64, "batch_size": 2}

    @classmethod
    def dynamic_shapes(cls, interface: Interface) -> dict:
        return dynamic_shapes()


def to_onnx(model: LITv2, example_size: int = 64, batch: int = 2) -> onnx.ModelProto:
    """Export image -> logits with symbolic batch, H and W (multiples of 32), edgekit bodies attached."""
    interface = LITv2Family.interface(model)
    image = torch.randn(batch, 3, example_size, example_size).numpy()
    return attach_functions(LITv2Family.to_onnx(model, interface, {"image": image}))
