//! GGUF metadata of the two output files: the language model (llama.cpp's `deepseek` /
//! `deepseek2` keys, docs/DEEPSEEK-VL2.md §9.7-9.8) and the mmproj (§9.9).

use quant::gguf::{Value, ValueType};
use quant::schema::{self, clip, general, llm, llm_key, pocketvl, tokenizer as tk, vl2};
use quant::GgmlType;

use crate::error::{ConvertError, Result};
use crate::hf_config::{ProcessorConfig, VlConfig};
use crate::tokenizer::TokenizerData;

/// GGUF key/value pairs in write order.
pub type Metadata = Vec<(String, Value)>;

/// Pad colour of `ImageOps.pad`: `int(0.5 * 255)` per channel (§3.4).
pub const PAD_COLOR: [u32; 3] = [127, 127, 127];
/// The processor tiles only when a conversation has at most this many images (§3.2).
pub const MAX_IMAGES_FOR_TILING: u32 = 2;

fn u32v(x: usize, key: &str) -> Result<Value> {
    u32::try_from(x)
        .map(Value::U32)
        .map_err(|_| ConvertError::Recipe(format!("{key}: {x} does not fit in u32")))
}

fn str_array(items: &[String]) -> Value {
    Value::Array(
        ValueType::String,
        items.iter().cloned().map(Value::String).collect(),
    )
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a recipe, named after the routed
/// experts' type (the bulk of the file).
pub fn file_type(experts: GgmlType) -> u32 {
    match experts {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4_K => 15,
        GgmlType::Q5_K => 17,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// Metadata of the language-model file.
pub fn language_metadata(
    cfg: &VlConfig,
    tok: &TokenizerData,
    name: &str,
    variant: Option<&str>,
    experts_type: GgmlType,
    description: &str,
) -> Result<Metadata> {
    let l = &cfg.language;
    let arch = if l.use_mla {
        schema::ARCH_DEEPSEEK2
    } else {
        schema::ARCH_DEEPSEEK
    };
    let k = |s: &str| llm_key(arch, s);
    let mut m: Metadata = vec![
        (general::ARCHITECTURE.into(), Value::String(arch.into())),
        (general::NAME.into(), Value::String(name.into())),
        (
            general::DESCRIPTION.into(),
            Value::String(description.into()),
        ),
        (
            general::FILE_TYPE.into(),
            Value::U32(file_type(experts_type)),
        ),
        (general::QUANTIZATION_VERSION.into(), Value::U32(2)),
        (
            k(llm::CONTEXT_LENGTH),
            u32v(l.max_position_embeddings, llm::CONTEXT_LENGTH)?,
        ),
        (
            k(llm::EMBEDDING_LENGTH),
            u32v(l.hidden_size, llm::EMBEDDING_LENGTH)?,
        ),
        (
            k(llm::BLOCK_COUNT),
            u32v(l.num_hidden_layers, llm::BLOCK_COUNT)?,
        ),
        (
            k(llm::FEED_FORWARD_LENGTH),
            u32v(l.intermediate_size, llm::FEED_FORWARD_LENGTH)?,
        ),
        (k(llm::VOCAB_SIZE), u32v(l.vocab_size, llm::VOCAB_SIZE)?),
        (
            k(llm::HEAD_COUNT),
            u32v(l.num_attention_heads, llm::HEAD_COUNT)?,
        ),
        (k(llm::ROPE_FREQ_BASE), Value::F32(l.rope_theta as f32)),
        (k(llm::RMS_EPS), Value::F32(l.rms_norm_eps as f32)),
    ];
    if l.use_mla {
        // Absorbed MLA presented as MQA (pitfall 49).
        let kv = l.kv_lora_rank;
        m.extend([
            (k(llm::HEAD_COUNT_KV), Value::U32(1)),
            (
                k(llm::ROPE_DIMENSION_COUNT),
                u32v(l.qk_rope_head_dim, "rope")?,
            ),
            (
                k(llm::KEY_LENGTH),
                u32v(kv + l.qk_rope_head_dim, llm::KEY_LENGTH)?,
            ),
            (k(llm::VALUE_LENGTH), u32v(kv, llm::VALUE_LENGTH)?),
            (
                k(llm::KEY_LENGTH_MLA),
                u32v(l.head_dim(), llm::KEY_LENGTH_MLA)?,
            ),
            (
                k(llm::VALUE_LENGTH_MLA),
                u32v(l.v_head_dim, llm::VALUE_LENGTH_MLA)?,
            ),
            (
                k(llm::Q_LORA_RANK),
                u32v(l.q_lora_rank.unwrap_or(0), llm::Q_LORA_RANK)?,
            ),
            (k(llm::KV_LORA_RANK), u32v(kv, llm::KV_LORA_RANK)?),
        ]);
    } else {
        let hd = l.head_dim();
        m.extend([
            (
                k(llm::HEAD_COUNT_KV),
                u32v(l.num_key_value_heads, llm::HEAD_COUNT_KV)?,
            ),
            (k(llm::ROPE_DIMENSION_COUNT), u32v(hd, "rope")?),
            (k(llm::KEY_LENGTH), u32v(hd, llm::KEY_LENGTH)?),
            (k(llm::VALUE_LENGTH), u32v(hd, llm::VALUE_LENGTH)?),
        ]);
    }
    if let Some(moe) = &l.moe {
        if l.moe_layer_freq != 1 {
            return Err(ConvertError::BadConfigValue {
                path: "config.json".into(),
                key: "language_config.moe_layer_freq".into(),
                reason: format!("{} cannot be expressed in GGUF (only 1)", l.moe_layer_freq),
            });
        }
        let gating = if moe.scoring_func == "sigmoid" {
            schema::GATING_SIGMOID
        } else {
            schema::GATING_SOFTMAX
        };
        m.extend([
            (
                k(llm::EXPERT_COUNT),
                u32v(moe.n_routed_experts, llm::EXPERT_COUNT)?,
            ),
            (
                k(llm::EXPERT_USED_COUNT),
                u32v(moe.num_experts_per_tok, llm::EXPERT_USED_COUNT)?,
            ),
            (
                k(llm::EXPERT_SHARED_COUNT),
                u32v(moe.n_shared_experts, llm::EXPERT_SHARED_COUNT)?,
            ),
            (
                k(llm::LEADING_DENSE_BLOCK_COUNT),
                u32v(l.first_k_dense_replace, llm::LEADING_DENSE_BLOCK_COUNT)?,
            ),
            (
                k(llm::EXPERT_FEED_FORWARD_LENGTH),
                u32v(moe.moe_intermediate_size, llm::EXPERT_FEED_FORWARD_LENGTH)?,
            ),
            (
                k(llm::EXPERT_WEIGHTS_SCALE),
                Value::F32(moe.routed_scaling_factor as f32),
            ),
            (k(llm::EXPERT_WEIGHTS_NORM), Value::Bool(moe.norm_topk_prob)),
            (k(llm::EXPERT_GATING_FUNC), Value::U32(gating)),
            (
                k(llm::EXPERT_GROUP_COUNT),
                u32v(moe.n_group, llm::EXPERT_GROUP_COUNT)?,
            ),
            (
                k(llm::EXPERT_GROUP_USED_COUNT),
                u32v(moe.topk_group, llm::EXPERT_GROUP_USED_COUNT)?,
            ),
            (
                pocketvl::TOPK_METHOD.into(),
                Value::String(moe.topk_method.clone()),
            ),
        ]);
    }
    m.extend([
        (pocketvl::ROPE_LAYOUT.into(), Value::String("norm".into())),
        (
            pocketvl::IMAGE_TOKEN_ID.into(),
            Value::U32(tok.image_token_id),
        ),
        (
            pocketvl::VARIANT.into(),
            Value::String(variant.unwrap_or("unknown").into()),
        ),
        (tk::MODEL.into(), Value::String("gpt2".into())),
        (tk::PRE.into(), Value::String(tok.pre.into())),
        (tk::TOKENS.into(), str_array(&tok.tokens)),
        (
            tk::TOKEN_TYPE.into(),
            Value::Array(
                ValueType::I32,
                tok.token_types.iter().map(|&t| Value::I32(t)).collect(),
            ),
        ),
        (tk::MERGES.into(), str_array(&tok.merges)),
        (tk::BOS_ID.into(), Value::U32(tok.bos_id)),
        (tk::EOS_ID.into(), Value::U32(tok.eos_id)),
        (tk::PAD_ID.into(), Value::U32(tok.pad_id)),
        (tk::ADD_BOS.into(), Value::Bool(true)),
        (tk::ADD_EOS.into(), Value::Bool(false)),
        (tk::HF_JSON.into(), Value::String(tok.hf_json.clone())),
    ]);
    Ok(m)
}

/// Metadata of the mmproj file.
pub fn mmproj_metadata(
    cfg: &VlConfig,
    proc: &ProcessorConfig,
    image_token_id: u32,
    name: &str,
    description: &str,
) -> Result<Metadata> {
    let v = &cfg.vision;
    let f32s = |x: [f64; 3]| {
        Value::Array(
            ValueType::F32,
            x.iter().map(|&f| Value::F32(f as f32)).collect(),
        )
    };
    let res: Vec<Value> = proc
        .candidate_resolutions
        .iter()
        .flat_map(|&(w, h)| [Value::U32(w), Value::U32(h)])
        .collect();
    Ok(vec![
        (
            general::ARCHITECTURE.into(),
            Value::String(schema::ARCH_CLIP.into()),
        ),
        (general::NAME.into(), Value::String(name.into())),
        (
            general::DESCRIPTION.into(),
            Value::String(description.into()),
        ),
        (clip::HAS_VISION_ENCODER.into(), Value::Bool(true)),
        (
            clip::PROJECTOR_TYPE.into(),
            Value::String(clip::PROJECTOR_DEEPSEEKVL2.into()),
        ),
        (clip::USE_GELU.into(), Value::Bool(true)),
        (
            clip::IMAGE_SIZE.into(),
            u32v(v.image_size, clip::IMAGE_SIZE)?,
        ),
        (
            clip::PATCH_SIZE.into(),
            u32v(v.patch_size, clip::PATCH_SIZE)?,
        ),
        (
            clip::EMBEDDING_LENGTH.into(),
            u32v(v.width, clip::EMBEDDING_LENGTH)?,
        ),
        (
            clip::FEED_FORWARD_LENGTH.into(),
            u32v(v.mlp_dim(), clip::FEED_FORWARD_LENGTH)?,
        ),
        (clip::BLOCK_COUNT.into(), u32v(v.layers, clip::BLOCK_COUNT)?),
        (
            clip::PROJECTION_DIM.into(),
            u32v(cfg.projector.n_embed, clip::PROJECTION_DIM)?,
        ),
        (clip::HEAD_COUNT.into(), u32v(v.heads, clip::HEAD_COUNT)?),
        (
            clip::LAYER_NORM_EPS.into(),
            Value::F32(v.layer_norm_eps as f32),
        ),
        (clip::IMAGE_MEAN.into(), f32s(proc.image_mean)),
        (clip::IMAGE_STD.into(), f32s(proc.image_std)),
        (
            clip::SCALE_FACTOR.into(),
            u32v(cfg.projector.downsample_ratio, clip::SCALE_FACTOR)?,
        ),
        (
            vl2::CANDIDATE_RESOLUTIONS.into(),
            Value::Array(ValueType::U32, res),
        ),
        (vl2::TILE_TAG.into(), Value::String(cfg.tile_tag.clone())),
        (
            vl2::GLOBAL_VIEW_POS.into(),
            Value::String(cfg.global_view_pos.clone()),
        ),
        (
            vl2::PAD_COLOR.into(),
            Value::Array(
                ValueType::U32,
                PAD_COLOR.iter().map(|&c| Value::U32(c)).collect(),
            ),
        ),
        (
            vl2::MAX_IMAGES_FOR_TILING.into(),
            Value::U32(MAX_IMAGES_FOR_TILING),
        ),
        (vl2::PROJECTOR_GELU.into(), Value::String("erf".into())),
        (
            vl2::UNFOLD_ORDER.into(),
            Value::String("channel_major".into()),
        ),
        (vl2::IMAGE_TOKEN_ID.into(), Value::U32(image_token_id)),
        (
            vl2::DOWNSAMPLE_RATIO.into(),
            u32v(proc.downsample_ratio, vl2::DOWNSAMPLE_RATIO)?,
        ),
    ])
}
