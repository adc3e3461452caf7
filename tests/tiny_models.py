"""Tiny multimodal models built from configs (no download): a LLaVA and its processor."""

from __future__ import annotations

from pathlib import Path

from tests.test_pack import make_tokenizer

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
            "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
            "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_llava_dir(d: Path, seed: int = 0) -> str:
    """A 2-layer LLaVA (CLIP 32 px + Llama) and its processor, saved in ``d``; ``seed`` gives another model."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    d.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.chat_template = TEMPLATE
    image_id = tok.convert_tokens_to_ids("<image>")
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>", chat_template=TEMPLATE)
    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8, projection_dim=32)
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_index=image_id,
                                                      vision_feature_layer=-2,
                                                      vision_feature_select_strategy="default"))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return str(d)
