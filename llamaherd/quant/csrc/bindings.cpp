// The Python module: the functions of kernels.h (and quantize_q8, for tests).
#include <torch/extension.h>

#include "common.h"
#include "kernels.h"

using namespace llamaherd;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The kernels touch no Python objects: other threads run meanwhile (the tokenizer being read
  // while weights are repacked, the server's HTTP loop while a batch is decoded).
  const py::call_guard<py::gil_scoped_release> nogil;
  m.def("gemm_float", &gemm_float_rows, "x @ W^T with W in F32, F16 or BF16 (few rows of x)", nogil);
  m.def("dequant_16bit", &dequant_16bit, "decode rows of an F16 or BF16 weight to float32", nogil);
  m.def("pack", &pack, "stack GGML weights by rows and repack them 8 rows interleaved (into `out` when given)",
        py::arg("parts"), py::arg("type"), py::arg("k"), py::arg("out") = py::none(), nogil);
  m.def("packed_bytes", &packed_bytes, "bytes of N rows of K values of a type in the packed layout");
  m.def("unpack", &unpack, "the GGML bytes of a packed weight", nogil);
  m.def("dequant_packed", &dequant_packed, "decode rows of a packed weight to float32", nogil);
  m.def("gemm_packed", &gemm_packed, "x @ W^T with W packed, x rounded to int8 blocks", nogil);
  m.def("use_amx", &use_amx, "let gemm_packed use AMX tiles where the CPU and OS have them (default); returns whether it will",
        py::arg("on"));
  m.def("amx", &amx, "whether gemm_packed uses AMX tiles for many rows of x");
  m.def("gemm_kquant", &gemm_kquant_rows, "x @ W^T with W a k-quant, Q2_K to Q6_K (few rows of x), x rounded to int8 terms", nogil);
  m.def("dequant_kquant", &dequant_kquant, "decode rows of a k-quant weight (Q2_K to Q6_K) to float32", nogil);
  m.def("rms_norm", &rms_norm, "RMSNorm of float32 rows", nogil);
  m.def("silu_mul", &silu_mul, "silu(gate) * up (rows may be strided); without up, gate is [..., 2H], both side by side",
        py::arg("gate"), py::arg("up") = py::none(), nogil);
  m.def("decode_attention", &decode_attention, "rotate, cache and attend one new token per sequence", nogil);
  m.def("decode_block", &decode_block, "a transformer block's decode step in one call", nogil);
  m.def("quantize_q8", [](torch::Tensor x, int64_t block, int64_t terms) {  // for tests: the int8 terms the kernels multiply
    TORCH_CHECK(block == 32 || block == 256, "block must be 32 (gemm_packed) or 256 (gemm_kquant)");
    TORCH_CHECK(1 <= terms && terms <= 3, "terms must be 1, 2 or 3");
    TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.size(1) % block == 0, "x must be float32 [M, K], K % block == 0");
    x = x.contiguous();
    const int64_t m = x.size(0), k = x.size(1);
    const Q8Act a = quantize_act(x.data_ptr<float>(), m, k, terms, block);
    auto q = torch::from_blob((void*)a.q.data(), {m, terms, k}, torch::kInt8).clone();
    auto d = torch::from_blob((void*)a.d.data(), {m, terms, k / block}, torch::kFloat32).clone();
    return std::make_tuple(q, d);
  }, "x as int8 terms q [M, terms, K] with scales d [M, terms, K / block], as gemm_packed (block 32) and gemm_kquant (256) carry it",
     py::arg("x"), py::arg("block") = 32, py::arg("terms") = 1);
}
