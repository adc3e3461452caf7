"""``pipe train mllm --stage 1|2``: the LLaVA-style model of the multimodal study.

Architecture (§3): a CLIP ViT-L/14-336 encoder whose second-to-last layer gives 576 patch features
(CLS dropped), a **single linear** connector into the LLM's embedding space, and the LLM
(Llama-3.1-8B-Instruct; any causal LM by config). transformers' ``LlavaForConditionalGeneration`` runs
the model; its projector (two linears around an activation) is replaced by one ``nn.Linear`` for
training. The export writes a standard LLaVA folder whose projector is that linear map exactly:
``linear_1`` = our weights, activation ``linear`` (identity), ``linear_2`` = identity, so transformers
(and ``pipe eval mm``) load and run it unchanged.

Stages (Appendix C): 1 trains only the connector on captions (lr 1e-3, warmup 0.03, global batch 32);
2 trains connector + LLM on instructions (lr 2e-5, wd 0.01, warmup 0.03, global batch 128); the vision
encoder stays frozen in both. Stage 1 starts from parts (``--vision`` + ``--model LLM``); stage 2 from
the stage-1 export (``--model RUN1/final``) or any LLaVA folder.

**The image token** is added to the tokenizer and the embedding grown once, when the model is built,
before sharding — never a resize of a sharded table mid-run. **Text-only rows** (text instructions in a
multimodal mixture): a micro batch without any image carries a blank image in the padding of its first
row (its tokens masked out of attention and loss), so the model runs exactly as for real images and
every rank gathers the same parameters in the same order; otherwise a rank holding only text would
skip the vision path's all-gathers and the job would hang (FSDP2) or stop on a module-order mismatch
(DeepSpeed ZeRO-3).

Rows come from a ``pipe mix`` directory: an image column (bytes, ``{bytes, path}`` or a path; null for
text-only rows) and either a conversation (messages or ShareGPT form; ``<image>`` placed at the start
of the first user turn when the row has an image and the text does not place it) or a ``caption``
(the user turn is ``prompts/mllm/caption.yaml`` in the row's ``language``). Loss on assistant tokens
only, from the chat template (as ``pipe pack``); rows are padded per micro batch, not packed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lrpipe.errors import InputError
from lrpipe.images import URL_COLUMNS
from lrpipe.training.config import TrainConfig
from lrpipe.training.data import IGNORE, MappedShards
from lrpipe.training.metrics import attention_flops_per_token

IMAGE_TOKEN = "<image>"
CONVERSATION_FIELDS = ("conversation", "messages", "conversations")


def caption_prompts(path: str | None = None) -> tuple[dict[str, str], str]:
    """The caption prompt table (``{language: request}``) and where it was read: ``path``, or the one
    shipped in ``prompts/mllm/caption.yaml``."""
    from lrpipe.config_files import read_yaml
    from lrpipe.prompting import prompt_root

    where = str(path) if path else str(prompt_root() / "mllm" / "caption.yaml")
    return read_yaml(Path(where), "caption prompt table"), where


def caption_languages(data: MappedShards) -> set[str]:
    """The languages of the rows holding a caption (one column read per file, memory-mapped)."""
    langs: set[str] = set()
    for k in range(len(data.files)):
        t = data._table(k)
        if "caption" not in t.column_names:
            continue
        mask = pc.is_valid(t.column("caption"))
        col = t.column("language") if "language" in t.column_names else pa.nulls(t.num_rows, pa.string())
        langs |= {x or "en" for x in pc.unique(pc.filter(col, mask)).to_pylist()}
    return langs


class LinearConnector(torch.nn.Module):
    """The study's connector: one linear map from vision features to LLM embeddings."""

    def __init__(self, vision_dim: int, text_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(vision_dim, text_dim, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.proj(image_features)


class LlavaTrainModel(torch.nn.Module):
    """The sharding root around the LLaVA model: returns the loss (every batch carries an image, see
    :meth:`MLLMTask.batch`)."""

    def __init__(self, llava: torch.nn.Module, image_size: int) -> None:
        super().__init__()
        self.llava = llava
        self.image_size = image_size

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.llava.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.llava.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pixel_values: torch.Tensor, num_items_in_batch: float | None = None) -> torch.Tensor:
        return self.llava(input_ids=input_ids, attention_mask=attention_mask, labels=labels, pixel_values=pixel_values,
                          num_items_in_batch=num_items_in_batch).loss


def image_chat_template(template: str | None) -> str | None:
    """The LLM's chat template taught to read content parts: an image part becomes ``<image>\\n`` before
    the text, exactly the layout the model was trained on, so processors (and ``pipe eval mm``) that send
    ``[{"type": "image"}, {"type": "text", ...}]`` get the training prompt."""
    if not template:
        return template
    prelude = (
        "{%- set _ns = namespace(msgs=[]) -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set _ns.msgs = _ns.msgs + [m] -%}"
        "{%- else -%}{%- set _t = namespace(s='') -%}"
        "{%- for c in m['content'] -%}"
        "{%- if c['type'] == 'image' -%}{%- set _t.s = _t.s + '" + IMAGE_TOKEN + "\\n' -%}"
        "{%- elif c['type'] == 'text' -%}{%- set _t.s = _t.s + c['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set _ns.msgs = _ns.msgs + [{'role': m['role'], 'content': _t.s}] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = _ns.msgs -%}")
    return prelude + template


def fold_projector(projector: torch.nn.Module) -> LinearConnector | None:
    """A LLaVA projector whose activation is the identity is one linear map: W = W2·W1, b = W2·b1 + b2."""
    act = type(getattr(projector, "act", None)).__name__
    if act not in ("LinearActivation", "Identity"):
        return None
    l1, l2 = projector.linear_1, projector.linear_2
    w = l2.weight.detach().float() @ l1.weight.detach().float()
    b = torch.zeros(w.shape[0])
    if l1.bias is not None:
        b = b + l2.weight.detach().float() @ l1.bias.detach().float()
    if l2.bias is not None:
        b = b + l2.bias.detach().float()
    conn = LinearConnector(w.shape[1], w.shape[0], bias=True)
    with torch.no_grad():
        conn.proj.weight.copy_(w)
        conn.proj.bias.copy_(b)
    return conn


class MLLMTask:
    name = "mllm"

    def __init__(self, cfg: TrainConfig, *, with_data: bool = True) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, LlavaConfig

        self.cfg = cfg
        self.compute_dtype = torch.float32
        if cfg.vision:  # stage 1 from parts
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            if IMAGE_TOKEN not in self.tokenizer.get_vocab():
                self.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.image_processor = AutoImageProcessor.from_pretrained(cfg.vision)
            vc = AutoConfig.from_pretrained(cfg.vision)
            vc = getattr(vc, "vision_config", vc)
            tc = AutoConfig.from_pretrained(cfg.model)
            tc.vocab_size = max(tc.vocab_size, len(self.tokenizer))
            self.config = LlavaConfig(vision_config=vc.to_dict() | {"model_type": vc.model_type},
                                      text_config=tc.to_dict() | {"model_type": tc.model_type},
                                      image_token_index=self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                                      projector_hidden_act="linear", multimodal_projector_bias=True,
                                      image_seq_length=(vc.image_size // vc.patch_size) ** 2)
            self.config.text_config.use_cache = False
        else:  # a LLaVA folder (stage 1 export, or any LLaVA-style model)
            from transformers import AutoProcessor

            proc = AutoProcessor.from_pretrained(cfg.model)
            self.tokenizer, self.image_processor = proc.tokenizer, proc.image_processor
            self.config = LlavaConfig.from_pretrained(cfg.model)
        vc = self.config.vision_config
        self.image_size, self.n_patches = vc.image_size, (vc.image_size // vc.patch_size) ** 2
        self.image_id = self.config.image_token_index
        self.linear = self.config.projector_hidden_act == "linear"
        self.prompts, where = caption_prompts(cfg.caption_prompts)
        if with_data:
            self.data = MappedShards(cfg.data)
            from lrpipe.images import require_images

            require_images(self.data.columns(), cfg.image_field, cfg.data)
            missing = sorted(caption_languages(self.data) - set(self.prompts))
            if missing:  # no silent English request for a language the table lacks
                raise InputError(f"no caption prompt for language(s) {missing} (the table has "
                                 f"{sorted(self.prompts)}): add them, or give --caption-prompts FILE with a "
                                 "line per language", path=where)
            self.n_rows, self.seq_len = len(self.data), cfg.max_length
            self.truncated = 0

    # ---- model
    def _wrap(self, llava: torch.nn.Module) -> LlavaTrainModel:
        if self.linear and not isinstance(llava.model.multi_modal_projector, LinearConnector):
            folded = fold_projector(llava.model.multi_modal_projector)
            if folded is None:
                vc, tc = self.config.vision_config, self.config.text_config
                folded = LinearConnector(vc.hidden_size, tc.hidden_size)
            llava.model.multi_modal_projector = folded
        return LlavaTrainModel(llava, self.image_size)

    def build(self, meta: bool, keep_dtype: bool = False) -> torch.nn.Module:
        """The model on the meta device, or with its weights in fp32 (``keep_dtype``: a LLaVA folder's
        own dtype, for FSDP2's rank-0 copy that is cast tensor by tensor into the fp32 shards)."""
        from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

        if meta:
            with torch.device("meta"):
                llava = LlavaForConditionalGeneration._from_config(self.config, dtype=torch.float32)
                if self.linear:
                    vc, tc = self.config.vision_config, self.config.text_config
                    llava.model.multi_modal_projector = LinearConnector(vc.hidden_size, tc.hidden_size)
            return LlavaTrainModel(llava, self.image_size)
        if not self.cfg.vision:
            return self._wrap(LlavaForConditionalGeneration.from_pretrained(
                self.cfg.model, dtype="auto" if keep_dtype else torch.float32))
        # from parts: the LLaVA skeleton without initializing what is loaded next
        from transformers import AutoModel
        from transformers.initialization import no_init_weights

        with no_init_weights():
            llava = LlavaForConditionalGeneration._from_config(self.config, dtype=torch.float32)
        vision = AutoModel.from_pretrained(self.cfg.vision, dtype=torch.float32)
        vision = getattr(vision, "vision_model", vision)
        tower = llava.model.vision_tower
        (tower.vision_model if hasattr(tower, "vision_model") else tower).load_state_dict(vision.state_dict())
        lm = AutoModelForCausalLM.from_pretrained(self.cfg.model, dtype=torch.float32)
        old = lm.get_input_embeddings().weight.shape[0]
        if self.config.text_config.vocab_size > old:  # the image token: new rows at the mean embedding
            torch.manual_seed(self.cfg.seed)  # (sampled around it: seeded, so every build is the same)
            lm.resize_token_embeddings(self.config.text_config.vocab_size, mean_resizing=True)
        llava.model.language_model.load_state_dict(lm.model.state_dict())
        llava.lm_head.load_state_dict(lm.lm_head.state_dict())
        torch.manual_seed(self.cfg.seed)
        vc, tc = self.config.vision_config, self.config.text_config
        llava.model.multi_modal_projector = LinearConnector(vc.hidden_size, tc.hidden_size)
        return LlavaTrainModel(llava, self.image_size)

    def parts(self, model: LlavaTrainModel) -> dict[str, torch.nn.Module]:
        llava = model.llava
        return {"vision": llava.model.vision_tower, "connector": llava.model.multi_modal_projector,
                "llm": torch.nn.ModuleList([llava.model.language_model, llava.lm_head])}

    def prepare(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        train = self.cfg.train if self.cfg.train != "all" else "connector+llm"
        model.requires_grad_(False)
        parts = self.parts(model)
        parts["connector"].requires_grad_(True)
        if train == "connector+llm":
            parts["llm"].requires_grad_(True)
        self.n_vision = sum(p.numel() for p in parts["vision"].parameters())
        self.n_llm = sum(p.numel() for p in parts["llm"].parameters()) - \
            model.llava.get_input_embeddings().weight.numel()
        if self.cfg.gradient_checkpointing:
            model.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        tower = parts["vision"]
        enc = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder
        return list(enc.layers) + list(model.llava.model.language_model.layers)

    # ---- data
    def _image(self, value: Any, where: str) -> Any:
        from PIL import Image

        try:
            if isinstance(value, dict):
                value = value.get("bytes") or value.get("path")
            if isinstance(value, (bytes, bytearray)):
                return Image.open(io.BytesIO(value)).convert("RGB")
            return Image.open(str(value)).convert("RGB")
        except Exception as e:
            raise InputError(f"cannot read the image ({e})", path=where, field=self.cfg.image_field) from e

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """input_ids (image token expanded to the patch count), labels, image (or None) of row ``i``."""
        from lrpipe.chat import conversation_of
        from lrpipe.tokenization import tokenize_conversations

        rec = self.data.record(i)
        where = f"{self.data.path} (row {i})"
        img_value = rec.get(self.cfg.image_field)
        if img_value is None and any(rec.get(c) for c in URL_COLUMNS):
            raise InputError("the row references an image by URL but carries none (was its download rejected? "
                             "train on the output of pipe images)", path=str(self.data.path), row=i,
                             field=self.cfg.image_field)
        # a conversation column, an instruction/response or question/answer pair (PixMo-AMA), or a caption
        msgs = conversation_of(rec, qa=True, path=str(self.data.path), index=i)
        conv_field = "conversation"
        if msgs is None and rec.get("caption") is not None:
            conv_field = "caption"
            lang = rec.get("language") or "en"
            prompt = self.prompts[lang]
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(rec["caption"])}]
        elif msgs is None:
            raise InputError(f"no conversation ({', '.join(CONVERSATION_FIELDS)}), instruction/response or "
                             "question/answer pair, or caption", path=str(self.data.path), row=i)
        if img_value is not None and not any(IMAGE_TOKEN in m["content"] for m in msgs):
            first = next(k for k, m in enumerate(msgs) if m["role"] == "user")
            msgs[first] = dict(msgs[first], content=f"{IMAGE_TOKEN}\n{msgs[first]['content']}")
        ids, labels = tokenize_conversations(self.tokenizer, [msgs])[0]
        at = np.flatnonzero(ids == self.image_id)
        image = None
        if img_value is not None:
            if len(at) != 1:
                raise InputError(f"expected one {IMAGE_TOKEN} in the conversation, found {len(at)}",
                                 path=str(self.data.path), row=i, field=conv_field or "caption")
            k = int(at[0])
            ids = np.concatenate([ids[:k], np.full(self.n_patches, self.image_id), ids[k + 1:]])
            labels = np.concatenate([labels[:k], np.full(self.n_patches, IGNORE), labels[k + 1:]])
            image = self._image(img_value, where)
        elif len(at):
            raise InputError(f"{IMAGE_TOKEN} in a row without an image", path=str(self.data.path), row=i)
        if len(ids) > self.cfg.max_length:
            self.truncated += 1
            ids, labels = ids[:self.cfg.max_length], labels[:self.cfg.max_length]
            if image is not None and (ids == self.image_id).sum() != self.n_patches:
                raise InputError(f"max_length {self.cfg.max_length} cuts the image tokens", path=where)
        return ids.astype(np.int64), labels.astype(np.int64), image

    def batch(self, rows: list[int]) -> dict[str, Any]:
        samples = [self.sample(i) for i in rows]
        n = max(len(s[0]) for s in samples)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = np.full((len(samples), n), pad, np.int64)
        labels = np.full((len(samples), n), IGNORE, np.int64)
        mask = np.zeros((len(samples), n), np.int64)
        for b, (x, y, _) in enumerate(samples):
            ids[b, :len(x)], labels[b, :len(y)], mask[b, :len(x)] = x, y, 1
        images = [s[2] for s in samples if s[2] is not None]
        if images:
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            # Text only: a blank image rides in row 0's padding (its tokens masked out of attention and
            # loss), so the model runs the vision tower and connector exactly as for a real image and
            # every rank gathers the same parameters in the same order (FSDP2 units, ZeRO-3 modules).
            # No real token sees it and it gets no gradient.
            ids = np.concatenate([ids, np.full((len(samples), self.n_patches), pad, np.int64)], axis=1)
            labels = np.concatenate([labels, np.full((len(samples), self.n_patches), IGNORE, np.int64)], axis=1)
            mask = np.concatenate([mask, np.zeros((len(samples), self.n_patches), np.int64)], axis=1)
            ids[0, n:] = self.image_id
            pixels = torch.zeros(1, 3, self.image_size, self.image_size)
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
                "attention_mask": torch.from_numpy(mask), "pixel_values": pixels,
                "_lens": [len(s[0]) for s in samples], "_images": len(images)}

    def loss_tokens(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def forward(self, model: torch.nn.Module, batch: dict[str, Any], n_items: float) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     pixel_values=batch["pixel_values"].to(self.compute_dtype), num_items_in_batch=n_items)

    def step_flops(self, batches: list[dict[str, Any]], n_dense: int) -> tuple[float, int]:
        """LLM: 6·N per token (+ attention); vision encoder: forward only (frozen, nothing flows back
        into it), 2·N per patch token, for real and blank images alike."""
        tc = self.config.text_config
        flops, tokens = 0.0, 0
        for b in batches:
            n = int(sum(b["_lens"]))
            attn = attention_flops_per_token(tc.num_hidden_layers, tc.hidden_size, [[x] for x in b["_lens"]],
                                             max(b["_lens"]))
            flops += n * (6.0 * self.n_llm + attn) + max(1, b["_images"]) * (self.n_patches + 1) * 2.0 * self.n_vision
            tokens += n
        return flops, tokens

    def export(self, checkpoint: Path, out: Path) -> Path:
        return export_llava(self.cfg, checkpoint, out)


def export_llava(cfg: TrainConfig, checkpoint: Path, out: Path) -> Path:
    """Checkpoint → a standard ``LlavaForConditionalGeneration`` folder with its processor."""
    from transformers import LlavaProcessor
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from lrpipe.training.checkpoint import load_model_weights

    task = MLLMTask(cfg, with_data=False)
    model = task.build(meta=True)
    model.to_empty(device="cpu")
    load_model_weights(checkpoint, model)
    llava = model.llava
    conn = llava.model.multi_modal_projector
    if isinstance(conn, LinearConnector):
        llava.config.projector_hidden_act, llava.config.multimodal_projector_bias = "linear", True
        proj = LlavaMultiModalProjector(llava.config)
        with torch.no_grad():
            proj.linear_1.weight.copy_(conn.proj.weight)
            proj.linear_1.bias.copy_(conn.proj.bias)
            proj.linear_2.weight.copy_(torch.eye(proj.linear_2.weight.shape[0]))
            proj.linear_2.bias.zero_()
        llava.model.multi_modal_projector = proj
    if cfg.dtype == "bf16" or (cfg.dtype == "auto" and torch.cuda.is_available()):
        llava.to(torch.bfloat16)
    llava.config.text_config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    llava.save_pretrained(out)
    vc = task.config.vision_config
    LlavaProcessor(image_processor=task.image_processor, tokenizer=task.tokenizer, patch_size=vc.patch_size,
                   vision_feature_select_strategy=task.config.vision_feature_select_strategy,
                   num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                   chat_template=image_chat_template(task.tokenizer.chat_template)).save_pretrained(out)
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(llava.config.text_config).save_pretrained(out)
    return out
