//! The single table of GGUF names pocketvl writes and reads: metadata keys and
//! tensor names for the language model (llama.cpp's `deepseek` / `deepseek2`
//! architectures, `src/llama-arch.cpp`) and the vision side (llama.cpp's
//! mmproj conventions, `tools/mtmd/clip-impl.h`, plus private `deepseekvl2.*`
//! keys for the DeepSeek-VL2 preprocessing facts llama.cpp has no name for).
//!
//! Converter and runtime both build names only through this module.

/// `general.architecture` of the language-model file for MHA checkpoints
/// (DeepSeek-VL2-Tiny). llama.cpp's `deepseek` arch uses NORM (adjacent-pair)
/// RoPE, so the converter permutes q/k rows per head from the reference's
/// half-split layout; the runtime then applies adjacent-pair RoPE.
pub const ARCH_DEEPSEEK: &str = "deepseek";
/// `general.architecture` of MLA checkpoints (DeepSeek-VL2-Small and VL2).
pub const ARCH_DEEPSEEK2: &str = "deepseek2";
/// `general.architecture` of the mmproj file.
pub const ARCH_CLIP: &str = "clip";

/// GGUF format version written.
pub const GGUF_VERSION: u32 = 3;
/// Default tensor data alignment (`general.alignment` absent).
pub const DEFAULT_ALIGNMENT: u64 = 32;

pub mod general {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const ALIGNMENT: &str = "general.alignment";
    pub const FILE_TYPE: &str = "general.file_type";
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
    /// Free text recording the converter and recipe (llama.cpp prints it).
    pub const DESCRIPTION: &str = "general.description";
}

/// Keys of pocketvl's cold-expert sidecar (`cold-<model>.gguf`, written by
/// `pocketvl convert --cold-experts TYPE`): a low-bit copy of every layer's
/// routed-expert tensors under the language file's own names. llama.cpp
/// refuses a file with tensors it does not create ("wrong number of
/// tensors"), so the copy cannot live in the language file itself.
pub mod cold {
    /// The type the copy was asked for (u32 ggml id; a tensor whose rows do
    /// not divide by its block falls back as the converter's recipes do).
    pub const TYPE: &str = "pocketvl.cold_experts.type";
    /// Layers of the language model the copy was made for (u32).
    pub const BLOCK_COUNT: &str = "pocketvl.cold_experts.block_count";
}

/// Language-model hyper-parameter keys; each is prefixed with the
/// architecture name by [`llm_key`].
pub mod llm {
    pub const CONTEXT_LENGTH: &str = "context_length";
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    pub const BLOCK_COUNT: &str = "block_count";
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    pub const VOCAB_SIZE: &str = "vocab_size";
    pub const HEAD_COUNT: &str = "attention.head_count";
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    pub const KEY_LENGTH: &str = "attention.key_length";
    pub const VALUE_LENGTH: &str = "attention.value_length";
    pub const KEY_LENGTH_MLA: &str = "attention.key_length_mla";
    pub const VALUE_LENGTH_MLA: &str = "attention.value_length_mla";
    pub const Q_LORA_RANK: &str = "attention.q_lora_rank";
    pub const KV_LORA_RANK: &str = "attention.kv_lora_rank";
    pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
    pub const EXPERT_COUNT: &str = "expert_count";
    pub const EXPERT_USED_COUNT: &str = "expert_used_count";
    pub const EXPERT_SHARED_COUNT: &str = "expert_shared_count";
    pub const LEADING_DENSE_BLOCK_COUNT: &str = "leading_dense_block_count";
    pub const EXPERT_FEED_FORWARD_LENGTH: &str = "expert_feed_forward_length";
    pub const EXPERT_WEIGHTS_SCALE: &str = "expert_weights_scale";
    pub const EXPERT_WEIGHTS_NORM: &str = "expert_weights_norm";
    /// 1 = softmax, 2 = sigmoid (llama.cpp `LLAMA_EXPERT_GATING_FUNC_TYPE_*`).
    pub const EXPERT_GATING_FUNC: &str = "expert_gating_func";
    pub const EXPERT_GROUP_COUNT: &str = "expert_group_count";
    pub const EXPERT_GROUP_USED_COUNT: &str = "expert_group_used_count";
}

/// `expert_gating_func` values.
pub const GATING_SOFTMAX: u32 = 1;
pub const GATING_SIGMOID: u32 = 2;

/// `"{arch}.{suffix}"`, e.g. `llm_key("deepseek2", llm::BLOCK_COUNT)`.
pub fn llm_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

/// Private keys of the language-model file (no llama.cpp equivalent).
pub mod pocketvl {
    /// RoPE pair layout the runtime must apply to the stored weights:
    /// `"norm"` (adjacent pairs 2i, 2i+1) for every file pocketvl writes.
    pub const ROPE_LAYOUT: &str = "pocketvl.rope_layout";
    /// The `<image>` placeholder token id.
    pub const IMAGE_TOKEN_ID: &str = "pocketvl.image_token_id";
    /// Name of the known variant from models.toml, or "unknown".
    pub const VARIANT: &str = "pocketvl.variant";
    /// `topk_method` of the checkpoint: "greedy" or "noaux_tc".
    pub const TOPK_METHOD: &str = "pocketvl.topk_method";
}

pub mod tokenizer {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
    /// The complete tokenizer.json (with the processor's added tokens).
    pub const HF_JSON: &str = "tokenizer.huggingface.json";
}

/// `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// mmproj keys (llama.cpp `clip-impl.h`).
pub mod clip {
    pub const HAS_VISION_ENCODER: &str = "clip.has_vision_encoder";
    pub const PROJECTOR_TYPE: &str = "clip.projector_type";
    pub const USE_GELU: &str = "clip.use_gelu";
    pub const IMAGE_SIZE: &str = "clip.vision.image_size";
    pub const PATCH_SIZE: &str = "clip.vision.patch_size";
    pub const EMBEDDING_LENGTH: &str = "clip.vision.embedding_length";
    pub const FEED_FORWARD_LENGTH: &str = "clip.vision.feed_forward_length";
    pub const BLOCK_COUNT: &str = "clip.vision.block_count";
    pub const PROJECTION_DIM: &str = "clip.vision.projection_dim";
    pub const HEAD_COUNT: &str = "clip.vision.attention.head_count";
    pub const LAYER_NORM_EPS: &str = "clip.vision.attention.layer_norm_epsilon";
    pub const IMAGE_MEAN: &str = "clip.vision.image_mean";
    pub const IMAGE_STD: &str = "clip.vision.image_std";
    pub const SCALE_FACTOR: &str = "clip.vision.projector.scale_factor";
    /// Value of `clip.projector_type` for DeepSeek-VL2 (unknown to llama.cpp).
    pub const PROJECTOR_DEEPSEEKVL2: &str = "deepseekvl2";
}

/// Private DeepSeek-VL2 preprocessing keys of the mmproj file.
pub mod vl2 {
    /// u32 array, flattened `w0, h0, w1, h1, ...` in config order.
    pub const CANDIDATE_RESOLUTIONS: &str = "deepseekvl2.candidate_resolutions";
    pub const TILE_TAG: &str = "deepseekvl2.tile_tag";
    pub const GLOBAL_VIEW_POS: &str = "deepseekvl2.global_view_pos";
    /// u32 array [r, g, b] of the padding colour (127 each).
    pub const PAD_COLOR: &str = "deepseekvl2.pad_color";
    pub const MAX_IMAGES_FOR_TILING: &str = "deepseekvl2.max_images_for_tiling";
    pub const PROJECTOR_GELU: &str = "deepseekvl2.projector_gelu";
    /// "channel_major": mm.0 columns keep the checkpoint's F.unfold order.
    pub const UNFOLD_ORDER: &str = "deepseekvl2.unfold_order";
    pub const IMAGE_TOKEN_ID: &str = "deepseekvl2.image_token_id";
    pub const DOWNSAMPLE_RATIO: &str = "deepseekvl2.downsample_ratio";
}

/// Language-model tensor names.
pub mod tensor {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    pub const OUTPUT: &str = "output.weight";

    // Per-layer suffixes, joined by [`blk`].
    pub const ATTN_NORM: &str = "attn_norm.weight";
    pub const FFN_NORM: &str = "ffn_norm.weight";
    pub const ATTN_Q: &str = "attn_q.weight";
    pub const ATTN_K: &str = "attn_k.weight";
    pub const ATTN_V: &str = "attn_v.weight";
    pub const ATTN_OUTPUT: &str = "attn_output.weight";
    pub const ATTN_Q_A: &str = "attn_q_a.weight";
    pub const ATTN_Q_A_NORM: &str = "attn_q_a_norm.weight";
    pub const ATTN_Q_B: &str = "attn_q_b.weight";
    pub const ATTN_KV_A_MQA: &str = "attn_kv_a_mqa.weight";
    pub const ATTN_KV_A_NORM: &str = "attn_kv_a_norm.weight";
    pub const ATTN_K_B: &str = "attn_k_b.weight";
    pub const ATTN_V_B: &str = "attn_v_b.weight";
    pub const FFN_GATE: &str = "ffn_gate.weight";
    pub const FFN_UP: &str = "ffn_up.weight";
    pub const FFN_DOWN: &str = "ffn_down.weight";
    pub const FFN_GATE_INP: &str = "ffn_gate_inp.weight";
    pub const EXP_PROBS_B: &str = "exp_probs_b.bias";
    pub const FFN_GATE_EXPS: &str = "ffn_gate_exps.weight";
    pub const FFN_UP_EXPS: &str = "ffn_up_exps.weight";
    pub const FFN_DOWN_EXPS: &str = "ffn_down_exps.weight";
    pub const FFN_GATE_SHEXP: &str = "ffn_gate_shexp.weight";
    pub const FFN_UP_SHEXP: &str = "ffn_up_shexp.weight";
    pub const FFN_DOWN_SHEXP: &str = "ffn_down_shexp.weight";

    /// `"blk.{layer}.{suffix}"`.
    pub fn blk(layer: usize, suffix: &str) -> String {
        format!("blk.{layer}.{suffix}")
    }
}

/// Vision tensor names of the mmproj file.
pub mod vtensor {
    pub const PATCH_EMBD_W: &str = "v.patch_embd.weight";
    pub const PATCH_EMBD_B: &str = "v.patch_embd.bias";
    pub const POSITION_EMBD: &str = "v.position_embd.weight";
    pub const POST_LN_W: &str = "v.post_ln.weight";
    pub const POST_LN_B: &str = "v.post_ln.bias";
    pub const IMAGE_NEWLINE: &str = "v.image_newline";
    pub const VIEW_SEPERATOR: &str = "v.view_seperator";
    /// Projector linears keep their index in the reference nn.Sequential.
    pub const MM0_W: &str = "mm.0.weight";
    pub const MM0_B: &str = "mm.0.bias";
    pub const MM2_W: &str = "mm.2.weight";
    pub const MM2_B: &str = "mm.2.bias";

    // Per-block suffixes, joined by [`vblk`].
    pub const LN1_W: &str = "ln1.weight";
    pub const LN1_B: &str = "ln1.bias";
    pub const ATTN_QKV_W: &str = "attn_qkv.weight";
    pub const ATTN_QKV_B: &str = "attn_qkv.bias";
    pub const ATTN_OUT_W: &str = "attn_out.weight";
    pub const ATTN_OUT_B: &str = "attn_out.bias";
    pub const LN2_W: &str = "ln2.weight";
    pub const LN2_B: &str = "ln2.bias";
    pub const FFN_UP_W: &str = "ffn_up.weight";
    pub const FFN_UP_B: &str = "ffn_up.bias";
    pub const FFN_DOWN_W: &str = "ffn_down.weight";
    pub const FFN_DOWN_B: &str = "ffn_down.bias";

    /// `"v.blk.{block}.{suffix}"`.
    pub fn vblk(block: usize, suffix: &str) -> String {
        format!("v.blk.{block}.{suffix}")
    }
}
