"""Multiple-choice log-likelihood: the batched shared-prefix path equals one pass per option, on a
tiny Llama and a tiny LLaVA built from configs; accuracy and acc_norm by hand."""

from __future__ import annotations

import random

import pytest

from lrpipe.eval.mc import MCItem, accuracy, score_batched, score_per_option

torch = pytest.importorskip("torch")


def _llama(vocab: int = 320):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def _items(rng: random.Random, n: int, image_tokens: list[int] | None = None) -> list[MCItem]:
    items = []
    for _ in range(n):
        ctx = [rng.randrange(1, 300) for _ in range(rng.randint(1, 30))]
        if image_tokens is not None:
            ctx = ctx[:3] + image_tokens + ctx[3:]
        opts = [[rng.randrange(1, 300) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(2, 5))]
        items.append(MCItem(ctx, opts, gold=0))
    return items


def _max_diff(a, b) -> float:
    return max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r, s))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_batched_equals_per_option_on_a_tiny_llama(impl):
    model = _llama()
    model.config._attn_implementation = impl
    items = _items(random.Random(1), 40)
    batched = score_batched(model, items, max_tokens=300)
    assert [len(s) for s in batched] == [len(it.options) for it in items]
    assert _max_diff(batched, score_per_option(model, items)) < 1e-4


def test_batched_equals_per_option_on_a_tiny_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8, projection_dim=32)
    tc = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_index=310,
                                                      vision_feature_layer=-2,
                                                      vision_feature_select_strategy="default")).eval()
    items = _items(random.Random(2), 10, image_tokens=[310] * 16)  # (32/8)² patches, CLS dropped
    for it in items:
        it.pixel_values = torch.randn(1, 3, 32, 32)
    assert _max_diff(score_batched(model, items, max_tokens=200), score_per_option(model, items)) < 1e-4
    # the image matters: another image changes the scores
    other = [MCItem(it.context, it.options, pixel_values=torch.randn(1, 3, 32, 32)) for it in items]
    assert _max_diff(score_batched(model, other), score_batched(model, items)) > 1e-3


def test_accuracy_and_length_normalized_accuracy_by_hand():
    items = [MCItem([1], [[2], [3]], gold=0, option_texts=["a", "bbbb"]),
             MCItem([1], [[2], [3]], gold=1, option_texts=["a", "bbbb"]),
             MCItem([1], [[2], [3]], gold=1, option_texts=["cc", "d"])]
    scores = [[-1.0, -2.0],   # acc: 0 ✓; per char: -1 vs -0.5 -> 1 ✗
              [-3.0, -8.0],   # acc: 0 ✗; per char: -3 vs -2 -> 1 ✓
              [-2.0, -1.5]]   # acc: 1 ✓; per char: -1 vs -1.5 -> 0 ✗
    assert accuracy(items, scores) == {"acc": pytest.approx(2 / 3), "acc_norm": pytest.approx(1 / 3), "n": 3}
