"""Real text that ships with Python, as byte tokens, small GPT-2 and Llama models built from a config (no download), and the ways to train them.

``pydoc_data.topics`` holds about 465 KB of English documentation in 79
topics. Setup B splits the topics into two halves: alternate topics in
sorted order, so both halves cover the whole range of subjects. Topics
repeat one another (the "else" topic holds the whole "if" statement
section), so a split by topic is not a split of the text: :func:`half_texts`
also drops from the second half every paragraph that occurs in the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def topics() -> dict[str, str]:
    import pydoc_data.topics

    return dict(pydoc_data.topics.topics)


def topic_halves() -> tuple[list[str], list[str]]:
    """The topic names of the two disjoint halves (even and odd positions in sorted order)."""
    names = sorted(topics())
    return names[0::2], names[1::2]


def _paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def half_texts() -> tuple[str, str]:
    """The text of each half: its topics joined by blank lines, the second without any paragraph of the first."""
    text = topics()
    first, second = topic_halves()
    seen = {p.strip() for n in first for p in _paragraphs(text[n])}
    one = "\n\n".join(text[n] for n in first)
    two = "\n\n".join(p for n in second for p in _paragraphs(text[n]) if p.strip() not in seen)
    return one, two


def as_bytes(text: str) -> Any:
    """``text`` in UTF-8 as an int64 tensor of byte values."""
    import torch

    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def text_bytes(names: list[str]) -> Any:
    """The topics ``names`` joined by blank lines, as an int64 tensor of byte values."""
    import torch

    text = topics()
    data = "\n\n".join(text[n] for n in names).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def text_batch(batch: int, tokens: int, names: list[str] | None = None) -> Any:
    """``batch`` windows of ``tokens`` bytes, evenly spaced over the text of ``names`` (default: every topic)."""
    import torch

    data = text_bytes(sorted(topics()) if names is None else names)
    step = (len(data) - tokens) // batch
    return torch.stack([data[i * step : i * step + tokens] for i in range(batch)])


def random_windows(data: Any, batch: int, tokens: int, generator: Any) -> Any:
    """``batch`` windows of ``tokens`` bytes of ``data`` at positions drawn from ``generator``."""
    import torch

    starts = torch.randint(0, len(data) - tokens, (batch,), generator=generator)
    return torch.stack([data[s : s + tokens] for s in starts.tolist()])


def build_gpt2(embd: int, n_layer: int, tokens: int, *, seed: int, lora_r: int | None = None, dropout: float = 0.1) -> Any:
    """GPT-2 on a byte vocabulary (256), ``n_embd=embd``, heads of 32 features, random init from ``seed``;
    with ``lora_r`` a PEFT LoRA adapter of that rank on c_attn, c_proj and c_fc."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_embd=embd, n_layer=n_layer, n_head=max(1, embd // 32), vocab_size=256, n_positions=tokens,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
        attn_pdrop=dropout, resid_pdrop=dropout, embd_pdrop=dropout,
    )
    model = transformers.GPT2LMHeadModel(config)
    if lora_r is not None:
        model = with_lora(model, lora_r)
    model.train()
    return model


def build_llama(embd: int, n_layer: int, tokens: int, *, seed: int, lora_r: int | None = None) -> Any:
    """A Llama-architecture model on a byte vocabulary (256), ``hidden_size=embd``, heads of 32 features with
    half as many key-value heads (grouped-query attention), an MLP of ``8/3 * embd`` rounded up to 32, random
    init from ``seed``; with ``lora_r`` a PEFT LoRA adapter of that rank on every projection."""
    import torch
    import transformers

    torch.manual_seed(seed)
    heads = max(1, embd // 32)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=embd, intermediate_size=32 * -(-8 * embd // 96), num_hidden_layers=n_layer,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=tokens,
        bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    if lora_r is not None:
        model = with_lora(model, lora_r)
    model.train()
    return model


#: The layers a LoRA adapter goes on, per architecture (``model_type`` of the config).
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def with_lora(model: Any, r: int) -> Any:
    """``model`` with a PEFT LoRA adapter of rank ``r`` on the layers of :data:`LORA_TARGETS`."""
    import peft

    kind = model.config.model_type
    config = peft.LoraConfig(r=r, target_modules=LORA_TARGETS[kind], fan_in_fan_out=kind == "gpt2", lora_dropout=0.0)
    return peft.get_peft_model(model, config)


def blocks(model: Any) -> Any:
    """The transformer blocks of a GPT-2 or Llama model (with or without a PEFT wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.transformer.h if hasattr(base, "transformer") else base.model.layers


def compression(model: Any, way: str, eps: float | None) -> Any:
    """The ``compress_activations`` context of a way, or ``None`` for the plain ones (vanilla, checkpoint, lora).

    ``exact`` is the policy with every layer input kept as is (method
    ``"vanilla"``: masks, recomputed chains, nothing decomposed, so nothing is
    computed only to be thrown away); ``lora+<name>`` is ``<name>`` on a
    LoRA model; every other name (``hosvd``, ``hosvd+all``, ``quant8_all``)
    is read as the comparison reads it (:func:`benchmarks._finetune.storage_method`).
    """
    from tensorcomp.adapters import compress_activations

    from ._finetune import storage_method

    if way in ("vanilla", "checkpoint", "lora"):
        return None
    if way == "exact":
        return compress_activations(model, "vanilla")
    method, options = storage_method(way.removeprefix("lora+"))
    return compress_activations(model, method, **({} if eps is None else {"eps": eps}), **options)


def checkpoint_blocks(model: Any, census: Callable[[], Any]) -> None:
    """Every block of ``model`` (GPT-2 or Llama) under ``transformers``' own activation checkpointing (non-reentrant).

    A checkpointed block keeps its tensor inputs outside autograd's saved
    tensors; each is added to ``census()`` (a ``SavedCensus`` or ``None``)
    when the block runs with gradients enabled.
    """
    import torch

    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before 5 names it after gradients
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def keep_inputs(module: Any, args: tuple, kwargs: dict) -> None:
        counter = census()
        if counter is not None and torch.is_grad_enabled():
            for t in (*args, *kwargs.values()):
                for u in t if isinstance(t, tuple) else (t,):  # Llama's rotary (cos, sin) come as a pair
                    if isinstance(u, torch.Tensor):
                        counter.add(u)

    for block in blocks(model):
        block.register_forward_pre_hook(keep_inputs, with_kwargs=True)
