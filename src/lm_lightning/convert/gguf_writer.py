"""A checkpoint as one GGUF file (llama.cpp, Ollama, LM Studio, llama-cpp-python, transformers' GGUF loader).

    python -m lm_lightning.export ckpt=PATH out=DIR format=gguf [outtype=f16] [overwrite=true]

Written with the ``gguf`` package (llama.cpp's own writer; the optional extra ``gguf``).

Architectures. Llama's shape (``model=llama``: RoPE, RMSNorm, SwiGLU, no biases, any GQA) becomes
GGUF's ``llama``. GPT-2's shape (learned positions, LayerNorm with bias, tanh-GELU, tied head, no
GQA/QK-norm/soft-cap) becomes GGUF's ``gpt2``. Anything else is refused with the one-line reason.
transformers' GGUF loader (5.x) reads a ``gpt2`` file only at GPT-2's own context (1024) and MLP
width (4 * n_embd): it ignores ``gpt2.context_length`` and ``gpt2.feed_forward_length``, which
llama.cpp reads; the test proves the mapping at that shape.

The q/k layout. llama.cpp's ``llama`` graph applies RoPE in its "normal" mode, which rotates
adjacent channel pairs (2i, 2i+1) of each head -- that is why llama.cpp's converter un-permutes
Hugging Face's rotate-half rows back to interleaved pairs, and why transformers' GGUF loader
permutes them forward again (row ``2i + a`` of a head -> ``a * hs/2 + i``). Our ``apply_rope`` already
rotates interleaved pairs with the same frequencies, so our q and k rows are written exactly as
they are; ``tests/test_gguf.py`` proves it through transformers' loader (logits) and shows that
the Hugging Face layout would be wrong.

Tied heads: no ``output.weight`` tensor; llama.cpp then uses ``token_embd.weight`` for the output
and transformers sets ``tie_word_embeddings``. Untied heads write ``output.weight``.

Types (``outtype``): f32, f16 (default), bf16, q8_0. As llama.cpp's converter does, 1-D tensors
(norm weights, biases) stay f32 in every type, and a matrix whose rows are not a multiple of
q8_0's block (32) is written f16 under q8_0.

The file is written to a temporary name in the output folder and renamed at the end, so a failure
leaves no partial ``.gguf``; an existing file is replaced only with ``overwrite=true``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lm_lightning.errors import UserError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def check_outtype(outtype: str) -> str:
    if outtype not in OUTTYPES:
        raise UserError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    return outtype


def gguf_converter(cfg: Any) -> Any:
    """The registered converter whose shape ``cfg`` has and that has a GGUF layout; UserError with every reason."""
    from lm_lightning.convert.registry import for_config

    found, problems = for_config(cfg)
    if found is not None and found.gguf_arch:
        return found
    raise UserError("format=gguf needs Llama's architecture (model=llama) or GPT-2's (model=gpt2); this model: "
                    "llama needs " + ", ".join(problems["llama"]) + "; gpt2 needs " + ", ".join(problems["gpt2"]))


def gguf_arch(cfg: Any) -> str:
    """'llama' or 'gpt2'; UserError with both reasons otherwise."""
    return gguf_converter(cfg).gguf_arch


def gguf_name(out: Path, source: dict[str, Any], outtype: str) -> Path:
    run_name = ((source.get("run_config") or {}).get("run_name") or "")
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(run_name or out.resolve().name or "model"))
    return out / f"{stem}-{outtype}.gguf"


def _tensors(model: Any, converter: Any) -> list[tuple[str, Any]]:
    """(GGUF name, float32 numpy array in our (out, in) layout) for every tensor."""
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    out = converter.gguf_tensors(sd, model.config)
    if not model.config.tie_weights:
        out.append(("output.weight", sd["lm_head.weight"]))
    return out


def _encode(gguf: Any, array: Any, outtype: str) -> tuple[Any, Any]:
    """(data, raw_dtype or None) for one tensor in the requested type."""
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if array.ndim == 1 or outtype == "f32":
        return np.ascontiguousarray(array, dtype=np.float32), None
    if outtype == "f16" or (outtype == "q8_0" and array.shape[-1] % 32):
        return array.astype(np.float16), None
    qtype = Q.BF16 if outtype == "bf16" else Q.Q8_0
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype), qtype


def _card(writer: Any, model: Any, tokenizer: Any, source: dict[str, Any], name: str) -> None:
    """The model card's fields as general.* metadata."""
    from lm_lightning.convert.model_card import NOT_RECORDED, data_line, final_metrics, train_command

    n = sum(p.numel() for p in model.parameters())
    metrics, _ = final_metrics(source)
    steps = source.get("global_step")
    writer.add_name(name)
    writer.add_size_label(_size(n))
    writer.add_description(f"Exported by lm_lightning from {source.get('ckpt') or 'a model in memory'}: "
                           f"{n:,} parameters, {steps if steps is not None else NOT_RECORDED} steps, {metrics}")
    fields = {"general.parameter_count": str(n), "general.tokenizer_kind": getattr(tokenizer, "kind", "") or "",
              "general.training.steps": str(steps) if steps is not None else NOT_RECORDED,
              "general.training.final_validation": metrics, "general.training.data": data_line(source.get("run_config")),
              "general.training.checkpoint": str(source.get("ckpt") or NOT_RECORDED),
              "general.training.command": train_command(source),
              "general.export.command": source.get("command") or NOT_RECORDED}
    for key, value in fields.items():
        writer.add_string(key, value)


def _size(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def _writer(gguf: Any, path: Path, arch: str) -> Any:
    class Writer(gguf.GGUFWriter):
        """GGUFWriter that also writes an empty array (it refuses them), for a vocabulary without merges."""

        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(str(path), arch)


def write_gguf(model: Any, tokenizer: Any, path: str | Path, outtype: str = "f16",
               source: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``path`` (a .gguf file); every refusal happens before anything is written."""
    from lm_lightning.convert.gguf_vocab import add_to_writer, gguf_vocab

    path, source = Path(path), source or {}
    check_outtype(outtype)
    cfg = model.config
    converter = gguf_converter(cfg)
    arch = converter.gguf_arch
    vocab = gguf_vocab(tokenizer, cfg.vocab_size)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=true to replace it")
    try:
        import gguf
    except ImportError as exc:
        raise UserError("format=gguf needs the gguf package: pip install -e '.[gguf]' (or pip install gguf)") from exc

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    try:
        writer = _writer(gguf, tmp, arch)
        _card(writer, model, tokenizer, source, path.stem)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.d_ff)
        writer.add_head_count(cfg.n_head)
        writer.add_vocab_size(cfg.vocab_size)
        converter.gguf_hparams(writer, cfg)
        writer.add_file_type(file_type)
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_to_writer(writer, vocab)
        for name, array in _tensors(model, converter):
            data, raw = _encode(gguf, array, outtype)
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"gguf": str(path), "gguf_architecture": arch, "outtype": outtype, "gguf_bytes": path.stat().st_size,
            "gguf_tokenizer": f"{vocab.model}/{vocab.pre}"}
