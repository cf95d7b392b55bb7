"""Upstream Wan2GP generation settings this engine does not act on, by why (pure Python: the payload models and
the engine both read it)."""

from __future__ import annotations

# Upstream settings that change what a generation produces and that this engine does not implement (caches that
# skip steps, guidance variants, upsamplers, sliding windows, ...). Upstream's definition files carry them, so a
# definition may (`cli models show` lists them as not implemented); a caller giving one explicitly gets an error
# naming it rather than a video made without it.
NOT_IMPLEMENTED_PARAMS: frozenset[str] = frozenset(
    {
        "tea_cache_setting",
        "tea_cache_start_step_perc",
        "skip_steps_cache_type",
        "skip_steps_multiplier",
        "skip_steps_start_step_perc",
        "RIFLEx_setting",
        "cfg_star_switch",
        "cfg_zero_step",
        "apg_switch",
        "perturbation_switch",
        "perturbation_layers",
        "perturbation_start_perc",
        "perturbation_end_perc",
        "slg_switch",
        "slg_layers",
        "slg_start_perc",
        "slg_end_perc",
        "NAG_scale",
        "NAG_tau",
        "NAG_alpha",
        "masking_strength",
        "denoising_strength",
        "embedded_guidance_scale",
        "spatial_upsampling",
        "temporal_upsampling",
        "film_grain_intensity",
        "film_grain_saturation",
        "sliding_window_size",
        "sliding_window_overlap",
        "sliding_window_color_correction_strength",
        "sliding_window_overlap_noise",
        "sliding_window_discard_last_frames",
        "audio_guidance_scale",
        "alt_guidance_scale",
        "control_net_weight_alt",
        "remove_background_images_ref",
    }
)

# Upstream settings of its web UI (how many videos to queue, which prompt box to read): nothing for one headless
# generation to do with them.
UI_ONLY_PARAMS: frozenset[str] = frozenset(
    {"batch_size", "repeat_generation", "multi_prompts_gen_type", "multi_images_gen_type", "prompt_enhancer", "mode"}
)
