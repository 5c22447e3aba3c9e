"""Build a Transformer from a checkpoint, one tensor at a time.

The model is created on the meta device (no memory), then each weight is decoded and
assigned in place, so a float model is never held twice.

How Linear weights are held (`quantize`):
  * None (default): a GGUF file's block-quantized and float weights keep their GGML
    encoding and run on the GGUF kernels (quant/gguf_linear.py): memory-mapped as they
    are, or repacked once for the integer kernels (then the file's pages are let go, and
    q/k/v and w1/w3 share one product each). On the CPU at float32, the float32, fp16 and
    bf16 Linear weights of Meta and Hugging Face checkpoints stay as they are in the file
    the same way (products in float32): a 16-bit 7B model takes 13.5 GB, not 27, and
    decodes twice as fast.
    `int8_activations` picks llama.cpp's rounding of activations for the integer kernels
    (one int8 term instead of three; see quant/gguf_linear.py).
  * "float": everything decoded to `dtype` (the plain path; the reference for tests).
  * "int8" / "int4": each Linear weight is decoded, quantized (quant/linear.py) and the
    float copy dropped before the next tensor is read (the output layer: int8 either way).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from . import fused_ops
from .errors import FormatError
from .model import Transformer, rope_frequencies
from .quant.ggml_types import GGMLType
from .quant.gguf_linear import GGUFEmbedding, GGUFLinear, WeightArena
from .quant.linear import QUANT_MODES, quantize_linear

QUANTIZE_CHOICES = (None, "float", *QUANT_MODES)
# The output layer stays int8 under int4, as llama.cpp's 4-bit mixes keep it at 6-8 bits:
# on SmolLM2 (Shakespeare, ctx 512) perplexity was +5.6% over float with an int4 output layer,
# +0.07% with int8.
_OUTPUT_MODE = {"int8": "int8", "int4": "int8"}


def build_model(
    checkpoint,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    quantize: str | None = None,
    group_size: int = 32,
    int8_activations: bool = False,
    during_repack: Callable[[], object] | None = None,
) -> Transformer:
    """The model of `checkpoint` (see the module docstring). `during_repack` is called once,
    on a second thread while GGUF weights are repacked (native code that lets go of the GIL),
    else after loading: the caller's own start-up work (reading the tokenizer) overlaps ours."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantize {quantize!r}; choose one of {', '.join(str(q) for q in QUANTIZE_CHOICES)}")
    config = checkpoint.config
    with torch.device("meta"):
        model = Transformer(config)
    available = set(checkpoint.tensor_names())
    device = torch.device(device)
    # GGUF blocks stay in the memory map on CPU; other devices get float weights (same model code)
    keep_16bit = quantize is None and dtype == torch.float32 and device.type == "cpu"
    keep_blocks = keep_16bit and hasattr(checkpoint, "tensor_info")
    state: dict[str, torch.Tensor] = {}
    file_tensors: dict[GGUFLinear, str] = {}  # GGUF-backed layers and the file tensor each reads
    # The stored dtype where the reader offers it: no float32 detour, and a tensor already in
    # the wanted dtype stays a view of the memory-mapped file instead of becoming a copy.
    read = getattr(checkpoint, "load_raw", checkpoint.load)
    for name, param in list(model.named_parameters()):
        if name not in available:
            raise FormatError(f"{checkpoint.path}: missing tensor {name}")
        module_name = name.rsplit(".", 1)[0]
        module = model.get_submodule(module_name)
        if keep_blocks and isinstance(module, (nn.Linear, nn.Embedding)):
            info = checkpoint.tensor_info(name)
            _check_shape(checkpoint, name, info.shape, param.shape)
            if info.ggml_type == GGMLType.F32 and isinstance(module, nn.Embedding):  # a zero-copy view of the map
                state[name] = checkpoint.file.raw(info.name).view(torch.float32).view(info.shape)
                continue
            raw = checkpoint.file.raw(info.name)
            n, k = info.shape
            if isinstance(module, nn.Linear):  # packed (and fused) below, once all are known
                linear = GGUFLinear(raw, info.ggml_type, n, k, pack=False)
                linear.int8_activations = int8_activations
                file_tensors[linear] = info.name
                model.set_submodule(module_name, linear)
                continue
            model.set_submodule(module_name, GGUFEmbedding(raw, info.ggml_type, n, k))
            if name == "tok_embeddings.weight" and config.tie_embeddings:  # a packed copy, or the same bytes
                model.output = GGUFLinear(raw, info.ggml_type, n, k, pack=False)
                model.output.int8_activations = int8_activations
                file_tensors[model.output] = info.name
            continue
        tensor = read(name)
        _check_shape(checkpoint, name, tensor.shape, param.shape)
        if quantize in QUANT_MODES and isinstance(module, nn.Linear):
            mode = _OUTPUT_MODE[quantize] if module_name == "output" else quantize
            model.set_submodule(module_name, quantize_linear(tensor.to(device), mode, group_size))
            _release_if_copied(checkpoint, name, tensor, None)
            continue
        if keep_16bit and isinstance(module, nn.Linear) and tensor.dtype in _FILE_FLOATS:
            kept = tensor.contiguous()  # a view of the file where it already is
            model.set_submodule(module_name, GGUFLinear(kept.view(torch.uint8).reshape(-1), _FILE_FLOATS[tensor.dtype], *kept.shape, pack=False))
            _release_if_copied(checkpoint, name, tensor, kept)
            continue
        state[name] = tensor.to(device=device, dtype=dtype)
        _release_if_copied(checkpoint, name, tensor, state[name])
    model.load_state_dict(state, assign=True, strict=False)
    if quantize in QUANT_MODES and config.tie_embeddings:  # the output layer gets its own quantized copy
        model.output = quantize_linear(model.tok_embeddings.weight.float(), _OUTPUT_MODE[quantize], group_size)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise FormatError(f"{checkpoint.path}: tensors not loaded: {', '.join(leftover[:5])}")
    model.rope_freqs = rope_frequencies(config, checkpoint.freq_factors).to(device)
    if keep_blocks and during_repack is not None:
        with ThreadPoolExecutor(1, thread_name_prefix="llamaherd-load") as pool:
            side = pool.submit(during_repack)
            _pack_gguf_linears(model, checkpoint.file, file_tensors)
            side.result()
    else:
        if keep_blocks:
            _pack_gguf_linears(model, checkpoint.file, file_tensors)
        if during_repack is not None:
            during_repack()
    return model.eval()


def _pack_gguf_linears(model: Transformer, file, file_tensors: dict[GGUFLinear, str]) -> None:
    """Repack GGUF weights for the integer kernels (GGUFLinear.pack), q/k/v and w1/w3 of a
    layer into one product where their encodings allow (GGUFLinear.concat), letting go of the
    file's pages as they are copied, a few MiB at a time, so no weight is held twice. Then
    each block's decode plan (fused_ops.decode_plan), its parts being final."""
    def release(layer: GGUFLinear, start: int = 0, nbytes: int | None = None) -> None:
        file.release(file_tensors[layer], start, nbytes)

    def packable() -> list[GGUFLinear]:
        return [m for m in model.modules() if isinstance(m, GGUFLinear) and m in file_tensors and m.packable()]

    arena = WeightArena([m._packed_bytes() for m in packable()])
    for block in model.layers:
        attn, ffn = block.attention, block.feed_forward
        for parts, fuse in (([attn.wq, attn.wk, attn.wv], attn.fuse), ([ffn.w1, ffn.w3], ffn.fuse)):
            if (fused := GGUFLinear.concat(parts, release, arena.take)) is not None:
                fuse(fused)
                for part in parts:
                    release(part)  # the partial pages at the ends of its chunks
    for module in packable():  # the fused ones' parts are no longer in the model
        module.pack(release, arena.take)
        release(module)
    for block in model.layers:
        block.decode_plan = fused_ops.decode_plan(block)


def _release_if_copied(checkpoint, name: str, source: torch.Tensor, kept: torch.Tensor | None) -> None:
    """The file's pages of `source` are not needed once what the model keeps is a copy (made
    contiguous, float32 widened, quantized): let them go (GGUF, safetensors and .pth
    maps), so resident memory holds the weights once."""
    release = getattr(checkpoint, "release", None)
    if release is None or (kept is not None and kept.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()):
        return
    release(name)


# Linear weights kept as the file has them, on the float kernels (quant/gguf_linear.py)
_FILE_FLOATS = {torch.float32: GGMLType.F32, torch.float16: GGMLType.F16, torch.bfloat16: GGMLType.BF16}


def _check_shape(checkpoint, name: str, shape, expected) -> None:
    if tuple(shape) != tuple(expected):
        raise FormatError(
            f"{checkpoint.path}: tensor {name} has shape {list(shape)}, the config needs {list(expected)}"
        )
