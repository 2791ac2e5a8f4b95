//! GPU ops. Each checks shapes, dtypes and limits on the host, then records into a [`crate::Batch`].

pub mod activation;
pub mod amp;
pub mod attention;
pub(crate) mod checks;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod gguf_matmul;
pub mod kv_cache;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod optim;
pub(crate) mod output_check;
pub mod pool;
pub mod quantized_linear;
pub mod reduce;
pub mod rotary;
pub mod sampling;
pub mod softmax;

pub use activation::Activation;
pub use attention::{
    attention, attention_backward, attention_naive, attention_naive_backward, Attention,
    AttentionOptions,
};
pub use conv::{
    conv2d, conv2d_backward, conv2d_quantized, BiasGradient, Conv2dGrads, Conv2dParams,
};
pub use dropout::{dropout, dropout_backward, DropoutKey};
pub use elementwise::{
    activation, activation_backward, axpy, bias_add, mul_in_place, scale_add, scale_in_place,
};
pub use embedding::{check_ids, embedding, embedding_backward};
pub use gguf_matmul::{gguf_gather, gguf_matmul, gguf_matmul_into, GgufWeights};
pub use kv_cache::{cache_append, decode_attention, embed_at, gather_rows};
pub use layer_norm::{layer_norm, layer_norm_backward, NormGrads, NormKind, Normalized};
pub use loss::{cross_entropy, regression, soft_cross_entropy, Loss, Regression, IGNORE_INDEX};
pub use matmul::{
    matmul, matmul_backward, matmul_into, MatmulGrads, MatmulOptions, Transposes, Write,
};
pub use optim::{adam_step, clip_grad_norm, sgd_step, AdamConfig, Momentum, SgdConfig};
pub use pool::{avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward, Pool2dParams};
pub use quantized_linear::{quantize_int8, quantized_linear, QuantizedWeights};
pub use reduce::{channel_sum, mean, row_max_argmax, sum, sum_squares, top_k};
pub use rotary::{rope, swiglu, swiglu_backward, Rotary};
pub use sampling::{sample_tokens, sample_tokens_with_table, SamplingSettings};
pub use softmax::{
    log_softmax, log_softmax_backward, softmax, softmax_backward, softmax_into, SoftmaxKind,
};

use crate::shaders::KernelSpec;

/// Every kernel family's contract, one line each: the shader tests iterate this list, so a kernel
/// missing here misses every portability and layout check, and a family's file that is not here
/// is reported by the test that matches `shaders/` against it.
pub const KERNELS: &[&KernelSpec] = &[
    &matmul::KERNEL,
    &softmax::KERNEL,
    &elementwise::KERNEL,
    &reduce::KERNEL,
    &loss::KERNEL,
    &optim::KERNEL,
    &conv::KERNEL,
    &pool::KERNEL,
    &amp::KERNEL,
    &quantized_linear::KERNEL,
    &attention::KERNEL,
    &layer_norm::KERNEL,
    &embedding::KERNEL,
    &dropout::KERNEL,
    &sampling::KERNEL,
    &kv_cache::KERNEL,
    &gguf_matmul::KERNEL,
    &rotary::KERNEL,
];
