"""One family key drives everything: each adapter registers itself (as timm's `@register_model`).

    @register_family("llava-1.5", model_type="llava", model_class="LlavaForConditionalGeneration",
                     alias="llava-1.5-7b", hub_id="llava-hf/llava-1.5-7b-hf", paper_name="LLaVA-1.5-7B")
    class LlavaAdapter(MLLM): ...

The key ("llava-1.5") names the family in config.PRESETS (Tab. 7), the baselines' presets, the offline
checkpoints and the records; `model_type` (a checkpoint's config.json) picks the adapter in load_mllm;
`alias` is the short `--model` name and the paper's model id in data/paper_results.csv; `paper_name` is how
tables and plots print it. Derived tables: HUB_IDS (alias -> hub id), PAPER_MODEL_NAMES (alias -> paper name).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    key: str            # "llava-1.5": presets, baselines, records (MLLM.family)
    model_type: str     # config.json's model_type
    model_class: str    # the transformers model class
    alias: str          # "llava-1.5-7b": --model alias, paper_results.csv's model id
    hub_id: str         # the checkpoint the paper used
    paper_name: str     # "LLaVA-1.5-7B"
    adapter: type


FAMILIES: dict[str, Family] = {}     # family key -> Family, in registration order


def register_family(key: str, *, model_type: str, model_class: str, alias: str, hub_id: str, paper_name: str):
    """Class decorator: register an MLLM adapter under the family `key` (sets `cls.family = key`)."""
    def deco(cls: type) -> type:
        if key in FAMILIES:
            raise ValueError(f"model family {key!r} is registered twice")
        cls.family = key
        FAMILIES[key] = Family(key, model_type, model_class, alias, hub_id, paper_name, cls)
        return cls
    return deco


def list_families() -> list[str]:
    """Registered family keys (the contract test runs every solver on each)."""
    return list(FAMILIES)


def family_of_model_type(model_type: str) -> Family:
    """The family whose adapter loads checkpoints of this config.json model_type."""
    for f in FAMILIES.values():
        if f.model_type == model_type:
            return f
    raise ValueError(f"model type {model_type!r} is not supported; supported: "
                     f"{sorted(f.model_type for f in FAMILIES.values())}")


def hub_ids() -> dict[str, str]:
    """alias -> hub id of every registered family."""
    return {f.alias: f.hub_id for f in FAMILIES.values()}


def paper_model_names() -> dict[str, str]:
    """alias (paper_results.csv's model id) -> the name the paper prints."""
    return {f.alias: f.paper_name for f in FAMILIES.values()}
