"""Prompt formatting: the paper's system prompt and suffix, few-shot turns, plain fallback."""

from __future__ import annotations

from winnow.chat import (
    PAPER_SYSTEM_PROMPT,
    PAPER_USER_SUFFIX,
    ChatFormat,
    FewShot,
    PromptFormatter,
    build_messages,
    prompt_token_ids,
    render_plain,
    render_prompt,
)


def test_messages_with_few_shot_turns():
    fmt = ChatFormat(few_shot=[FewShot(question="What is 2 + 3?", answer="2 + 3 = 5. \\boxed{5}")])
    msgs = build_messages("What is 4 + 4?", fmt)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"] == PAPER_SYSTEM_PROMPT
    assert msgs[1]["content"] == f"What is 2 + 3?\n\n{PAPER_USER_SUFFIX}"
    assert msgs[2]["content"] == "2 + 3 = 5. \\boxed{5}"
    assert msgs[3]["content"] == f"What is 4 + 4?\n\n{PAPER_USER_SUFFIX}"


def test_paper_format_without_demos_or_system():
    msgs = build_messages("Q", ChatFormat(few_shot=[], system_prompt=None, user_suffix=""))
    assert msgs == [{"role": "user", "content": "Q"}]
    assert len(ChatFormat().few_shot) == 2  # the default demonstrations for small models


def test_chat_template_rendering_and_ids(tiny):
    _, tok = tiny
    fmt = ChatFormat()
    text = render_prompt(tok, "What is 4 + 4?", fmt)
    # ChatML: system, two demonstrations, the problem, an open assistant turn
    assert text.startswith("<|im_start|>system\n" + PAPER_SYSTEM_PROMPT + "<|im_end|>\n")
    assert text.count("<|im_start|>user\n") == 3
    assert text.count("<|im_start|>assistant\n") == 3
    assert text.endswith("What is 4 + 4?\n\n" + PAPER_USER_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n")
    ids = prompt_token_ids(tok, "What is 4 + 4?", fmt)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert PromptFormatter(tok, fmt)("What is 4 + 4?") == ids


def test_plain_fallback_without_template(tiny):
    _, tok = tiny
    fmt = ChatFormat(use_chat_template=False, few_shot=[FewShot(question="1+1?", answer="\\boxed{2}")])
    text = render_prompt(tok, "2+2?", fmt)
    assert text == (
        f"System: {PAPER_SYSTEM_PROMPT}\n\nUser: 1+1?\n\n{PAPER_USER_SUFFIX}\n\nAssistant: \\boxed{{2}}"
        f"\n\nUser: 2+2?\n\n{PAPER_USER_SUFFIX}\n\nAssistant:"
    )
    assert render_plain([{"role": "user", "content": "x"}]) == "User: x\n\nAssistant:"
