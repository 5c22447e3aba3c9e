// The torch-facing functions of the kernel files, bound to Python by bindings.cpp.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <vector>

namespace llamaherd {

// float_kernels.cpp: F32, F16, BF16
at::Tensor gemm_float_rows(at::Tensor x, at::Tensor w, int64_t type, int64_t n);
void dequant_16bit(at::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, at::Tensor out);

// packed_kernels.cpp: Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0, Q2_K .. Q6_K in the packed 8-row layout
at::Tensor pack(std::vector<at::Tensor> parts, int64_t type, int64_t k, std::optional<at::Tensor> out);
int64_t packed_bytes(int64_t type, int64_t n, int64_t k);
at::Tensor unpack(at::Tensor w, int64_t type, int64_t n, int64_t k);
void dequant_packed(at::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, at::Tensor out);
at::Tensor gemm_packed(at::Tensor x_in, at::Tensor w, int64_t type, int64_t n, int64_t x_terms);
bool use_amx(bool on);  // whether gemm_packed may use AMX tiles; returns whether it will
bool amx();             // whether it does

// kquant_kernels.cpp: Q2_K .. Q6_K, IQ4_XS
at::Tensor gemm_kquant_rows(at::Tensor x_in, at::Tensor w, int64_t type, int64_t n, int64_t x_terms);
void dequant_kquant(at::Tensor w, int64_t type, int64_t n, int64_t k, int64_t r0, int64_t r1, at::Tensor out);

// fused_ops.cpp: small fused float32 ops of a decode step
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps);
at::Tensor silu_mul(at::Tensor gate, c10::optional<at::Tensor> up);
at::Tensor decode_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor rot,
                               at::Tensor caches_k, at::Tensor caches_v, int64_t layer,
                               c10::optional<at::Tensor> rows_or_none, at::Tensor positions);
at::Tensor decode_block(at::Tensor x, at::Tensor attention_norm, at::Tensor ffn_norm, double eps,
                        std::vector<at::Tensor> weights, std::vector<int64_t> spec, int64_t x_terms,
                        int64_t n_heads, int64_t n_kv_heads, at::Tensor rot, at::Tensor caches_k, at::Tensor caches_v,
                        int64_t layer, c10::optional<at::Tensor> rows, at::Tensor positions);

}  // namespace llamaherd
