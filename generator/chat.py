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

from typing import Any

from winnow.generator.config import ChatFormat


def _user_text(question: str, fmt: ChatFormat) -> str:
    return f"{question.rstrip()}\n\n{fmt.user_suffix}" if fmt.user_suffix else question


def build_messages(problem: str, fmt: ChatFormat) -> list[dict[str, str]]:
    """The chat: optional system turn, one user/assistant pair per demonstration, the problem."""
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


def render_prompt(tokenizer: Any, problem: str, fmt: ChatFormat) -> str:
    """The prompt text the model is conditioned on (template applied, generation prompt opened)."""
    messages = build_messages(problem, fmt)
    if fmt.use_chat_template and has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(text, str):  # some tokenizers return a list for batched input
            text = text[0]
        return text
    return render_plain(messages)


def prompt_token_ids(tokenizer: Any, problem: str, fmt: ChatFormat) -> list[int]:
    """Prompt token ids for ``problem``: the rendered prompt encoded without extra special tokens
    (unless ``fmt.add_special_tokens``)."""
    text = render_prompt(tokenizer, problem, fmt)
    ids = tokenizer(text, add_special_tokens=fmt.add_special_tokens)["input_ids"]
    return [int(t) for t in ids]


class PromptFormatter:
    """``formatter(problem) -> list[int]`` bound to one tokenizer and format."""

    def __init__(self, tokenizer: Any, fmt: ChatFormat | None = None) -> None:
        self.tokenizer = tokenizer
        self.fmt = fmt or ChatFormat()

    def text(self, problem: str) -> str:
        return render_prompt(self.tokenizer, problem, self.fmt)

    def __call__(self, problem: str) -> list[int]:
        return prompt_token_ids(self.tokenizer, problem, self.fmt)
