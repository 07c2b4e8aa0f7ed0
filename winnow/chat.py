"""Problem text -> prompt token ids, in the paper's format.

The paper (Xiong et al. 2025, §4) uses the system message "Please reason step by step, and put
your final answer within \\boxed{}." and appends "Let's think step by step and output the final
answer within \\boxed{}." to the problem. Both are configurable (:class:`ChatFormat`). Small
models need demonstrations: each configured (question, answer) pair becomes an earlier
user/assistant exchange, so the model sees the answer format before the real problem.

The messages are rendered with the tokenizer's chat template (``add_generation_prompt=True``)
and then encoded without adding special tokens again. Tokenizers without a chat template (or
``use_chat_template: false``) get a plain-text fallback::

    System: <system>\\n\\nUser: <q1>\\n\\nAssistant: <a1>\\n\\nUser: <problem>\\n\\nAssistant:
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from winnow.config import Model

PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PAPER_USER_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."


class FewShot(Model):
    """One demonstration, shown as an earlier user/assistant exchange before the real problem."""

    question: str = Field(min_length=1)
    """The demonstration problem (the user suffix is appended as for real problems)."""
    answer: str = Field(min_length=1)
    """The assistant's demonstrated answer, ending with a \\boxed{} answer."""


DEFAULT_FEW_SHOT = [
    FewShot(question="What is 2 + 3?", answer="2 + 3 = 5. \\boxed{5}"),
    FewShot(question="What is 7 - 4?", answer="7 - 4 = 3. \\boxed{3}"),
]


class ChatFormat(Model):
    """How a problem becomes prompt tokens: the paper's system prompt and user suffix, optional
    few-shot demonstrations as earlier chat turns, the tokenizer's chat template (or a plain-text
    fallback for tokenizers without one)."""

    system_prompt: str | None = PAPER_SYSTEM_PROMPT
    """System message (None or "" = no system turn)."""
    user_suffix: str = PAPER_USER_SUFFIX
    """Appended to every problem (and every demonstration question) after a blank line; "" = none."""
    few_shot: list[FewShot] = Field(default_factory=lambda: [d.model_copy() for d in DEFAULT_FEW_SHOT])
    """Demonstrations shown before the problem. Small models (SmolLM2-135M) need them to use \\boxed{};
    set [] for models that already follow the format (the paper's setting)."""
    use_chat_template: bool = True
    """Apply the tokenizer's chat template. When False, or when the tokenizer has none, use the
    plain-text fallback ("System: ...\\n\\nUser: ...\\n\\nAssistant:")."""
    add_special_tokens: bool = False
    """Let the tokenizer add its BOS/special tokens when encoding the rendered prompt (templates
    usually already contain them)."""




def _user_text(question: str, fmt: ChatFormat) -> str:
    return f"{question.rstrip()}\n\n{fmt.user_suffix}" if fmt.user_suffix else question


Turns = Sequence[tuple[str, str]] | None
"""A dataset's own chat prompt as ``(role, content)`` turns (winnow.datasets), or None."""


def build_messages(problem: str, fmt: ChatFormat, turns: Turns = None) -> list[dict[str, str]]:
    """The chat: optional system turn, one user/assistant pair per demonstration, the problem. A dataset's
    own chat prompt (``turns``) is used as it is: the format's system prompt, suffix and demonstrations
    apply to plain-text problems only."""
    if turns:
        return [{"role": r, "content": c} for r, c in turns]
    messages: list[dict[str, str]] = []
    if fmt.system_prompt:
        messages.append({"role": "system", "content": fmt.system_prompt})
    for demo in fmt.few_shot:
        messages.append({"role": "user", "content": _user_text(demo.question, fmt)})
        messages.append({"role": "assistant", "content": demo.answer})
    messages.append({"role": "user", "content": _user_text(problem, fmt)})
    return messages


def render_plain(messages: list[dict[str, str]]) -> str:
    """Plain-text fallback for tokenizers without a chat template; ends with "Assistant:"."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    parts = [f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, problem: str, fmt: ChatFormat, turns: Turns = None) -> str:
    """The prompt text the model is conditioned on (template applied, generation prompt opened)."""
    messages = build_messages(problem, fmt, turns)
    if fmt.use_chat_template and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt: str = text if isinstance(text, str) else text[0]  # some tokenizers return a list for batched input
        return prompt
    return render_plain(messages)


def prompt_token_ids(tokenizer: Any, problem: str, fmt: ChatFormat, turns: Turns = None) -> list[int]:
    """Prompt token ids for ``problem``: the rendered prompt encoded without extra special tokens
    (unless ``fmt.add_special_tokens``)."""
    text = render_prompt(tokenizer, problem, fmt, turns)
    ids = tokenizer(text, add_special_tokens=fmt.add_special_tokens)["input_ids"]
    return [int(t) for t in ids]


class PromptFormatter:
    """``formatter(problem) -> list[int]`` bound to one tokenizer and format."""

    def __init__(self, tokenizer: Any, fmt: ChatFormat | None = None) -> None:
        self.tokenizer = tokenizer
        self.fmt = fmt or ChatFormat()

    def text(self, problem: str, turns: Turns = None) -> str:
        return render_prompt(self.tokenizer, problem, self.fmt, turns)

    def __call__(self, problem: str, turns: Turns = None) -> list[int]:
        return prompt_token_ids(self.tokenizer, problem, self.fmt, turns)
