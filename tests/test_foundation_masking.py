"""Labels are IGNORE (-100) exactly on prompt, non-assistant and padding tokens; EOS is learned."""

from __future__ import annotations

from tunelab.data.tokens import IGNORE
from tunelab.tasks import get_task
from tunelab.tasks.lm import collate

SFT = get_task("sft")


def test_prompt_completion_masks_the_prompt_and_learns_eos(tokenizer):
    row = {"prompt": "Capital of France?", "completion": " Paris"}
    enc = SFT.encode(row, "prompt_completion", tokenizer, 128)
    n_prompt = len(tokenizer("Capital of France?")["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert enc.input_ids[-1] == tokenizer.eos_token_id and enc.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc.input_ids[n_prompt:-1]) == " Paris"


def test_chat_labels_cover_exactly_the_assistant_turns(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."}]
    enc = SFT.encode({"messages": messages}, "messages", tokenizer, 256)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(enc.input_ids) == full
    learned = [tokenizer.decode([t for t, l in zip(enc.input_ids, enc.labels) if l != IGNORE])]
    assert learned == ["Hello.<|im_end|>Goodbye.<|im_end|>"]
    # Every supervised position is a copy of its input token (no shifted or foreign labels).
    assert all(l in (IGNORE, t) for t, l in zip(enc.input_ids, enc.labels))


def test_weight_zero_turn_is_not_learned(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Wrong.", "weight": 0},
                {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Right."}]
    enc = SFT.encode({"messages": messages}, "messages", tokenizer, 256)
    learned = tokenizer.decode([t for t, l in zip(enc.input_ids, enc.labels) if l != IGNORE])
    assert learned == "Right.<|im_end|>"


def test_generation_prompt_matches_training_prefix(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    enc = SFT.encode({"messages": messages}, "messages", tokenizer, 256)
    case = SFT.generation_case({"messages": messages}, "messages", tokenizer)
    assert enc.input_ids[: len(case.prompt_ids)] == case.prompt_ids
    assert enc.labels[len(case.prompt_ids) - 1] == IGNORE and enc.labels[len(case.prompt_ids)] != IGNORE
    assert case.reference == "Hello."


def test_padding_is_ignored_even_when_pad_equals_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2: the trap this guards
    short = SFT.encode({"prompt": "a", "completion": " b"}, "prompt_completion", tokenizer, 64)
    long = SFT.encode({"prompt": "a b c d e f", "completion": " g h i"}, "prompt_completion", tokenizer, 64)
    batch = collate([short, long], tokenizer.pad_token_id)
    n = len(short.input_ids)
    assert batch["labels"][0, n:].tolist() == [IGNORE] * (batch["labels"].shape[1] - n)
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["labels"].shape[1] - n)
    assert batch["labels"][0, n - 1].item() == tokenizer.eos_token_id  # the real EOS keeps its label


def test_truncation_cuts_from_the_end(tokenizer):
    enc = SFT.encode({"prompt": "word " * 50, "completion": " end"}, "prompt_completion", tokenizer, 16)
    assert len(enc.input_ids) == 16 and enc.truncated and enc.supervised == 0


def test_causal_lm_learns_every_token_and_eos(tokenizer):
    enc = get_task("causal_lm").encode({"text": "Once upon a time"}, "text", tokenizer, 64)
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tokenizer.eos_token_id
