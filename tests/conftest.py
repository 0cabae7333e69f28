"""Shared fixtures: tiny random-weight models of several architectures, a tokenizer made in code."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A template that rejects a system turn, like Gemma's.
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

_CORPUS = [
    "What is 12 plus 30? The answer is 42.",
    "Step 1: Ava has 3 apples. Step 2: she buys 4 more, so 3 + 4 = 7.",
    "Would a lion salute a lieutenant? The final answer is no.",
    "You are a helpful assistant.",
] * 20


def make_tokenizer(template: str | None = CHAT_TEMPLATE, bos: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if template:
        fast.chat_template = template
    return fast


def _configs(vocab: int):
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
    )

    common = dict(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return {
        "llama": LlamaConfig(**common, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**common),  # q/k/v biases
        "gemma": GemmaConfig(**common, head_dim=4),
        "mistral": MistralConfig(**common, sliding_window=None),
        "phi3": Phi3Config(**common, pad_token_id=0),  # fused qkv_proj and gate_up_proj
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=16, n_layer=3, n_head=4, n_positions=256),  # Conv1D, fused c_attn
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                  num_attention_heads=4, max_position_embeddings=256),
        # not in ARCHS (used by tests/test_oracle_independent.py only):
        "gemma2": Gemma2Config(**common, head_dim=4),  # tied head, soft-capping, alternating sliding window
        "llama_tied": LlamaConfig(**common, tie_word_embeddings=True),  # lm_head.weight is model.embed_tokens.weight
    }


ARCHS = ["llama", "qwen2", "gemma", "mistral", "phi3", "gpt2", "gpt_neox"]


def make_model(arch: str, vocab: int, dtype="float64", seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _configs(vocab)[arch]
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # random weights large enough that gradients are far from zero in every layer
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.to(getattr(torch, dtype)).eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def save_model(tmp_path: Path, arch: str, tokenizer, dtype="float64") -> Path:
    model = make_model(arch, len(tokenizer), dtype=dtype)
    folder = tmp_path / f"tiny-{arch}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


RECORDS = [
    {"instruction": "What is 12 plus 30?", "input": "", "output": "The answer is 42."},
    {"instruction": "Would a lion salute a lieutenant?", "input": "", "output": "no"},
    {"instruction": "Ava has 3 apples and buys 4 more.", "input": "How many now?", "output": "Step 1: 3 + 4 = 7. The answer is 7."},
    {"instruction": "You are a helpful assistant.", "input": "", "output": "Step 1: Ava has 3 apples. Step 2: she buys 4 more, so 3 + 4 = 7. The final answer is 7."},
    {"instruction": "What is 12 plus 30?", "input": "", "output": "42"},
]


@pytest.fixture
def records():
    return [dict(r) for r in RECORDS]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    """A saved tiny Llama (float64) with the test tokenizer, one per test module."""
    return save_model(tmp_path_factory.mktemp("model"), "llama", tokenizer)
