// Frozen linear layers through oneDNN with weights packed once (the CPU path of
// src/model/onednn.rs). ATen sends fp32 linears to MKL and re-lays bf16 weights out
// on every call; the packed oneDNN matmul does neither, and fuses the activation
// that follows it when nothing needs its input for a backward.
//
// tch has no binding for ops outside the aten namespace, nor for custom autograd
// functions: both are reached here, behind a C ABI whose tensors are tch's
// (`at::Tensor*`, owned by the caller) and whose errors come back as strings.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// mkldnn::_linear_pointwise(X, W, B?, attr, scalars, algorithm?): act(X W^T + B), X 2-D.
at::Tensor linear_pointwise(const at::Tensor& x, const at::Tensor& packed, const c10::IValue& bias,
                            const std::string& attr, const std::string& algorithm) {
  static const c10::OperatorHandle handle = op("mkldnn::_linear_pointwise");
  const auto rows = x.reshape({-1, x.size(-1)}).contiguous();
  std::vector<c10::IValue> stack{rows, packed, bias, attr, c10::List<std::optional<at::Scalar>>(),
                                 algorithm.empty() ? c10::IValue() : c10::IValue(algorithm)};
  handle.callBoxed(&stack);
  auto y = stack[0].toTensor();
  auto shape = x.sizes().vec();
  shape.back() = y.size(-1);
  return y.view(shape);
}

// The input's gradient only: the weights are frozen. The backward multiplies by W
// through its own packed copy (W^T packed as a [in, out] linear weight).
struct FrozenLinear : public torch::autograd::Function<FrozenLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& packed, const at::Tensor& bias,
                            const at::Tensor& packed_t) {
    ctx->saved_data["packed_t"] = packed_t;
    return linear_pointwise(x, packed, bias, "none", "");
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto packed_t = ctx->saved_data["packed_t"].toTensor();
    auto gx = linear_pointwise(grads[0], packed_t, c10::IValue(), "none", "");
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

void fpt_onednn_free_error(char* e) { free(e); }

// Whether this libtorch has the oneDNN ops we call.
int fpt_onednn_available() {
  auto& d = c10::Dispatcher::singleton();
  return d.findSchema({"mkldnn::_linear_pointwise", ""}).has_value() &&
         d.findSchema({"mkldnn::_reorder_linear_weight", ""}).has_value();
}

// `w` ([out, in]) in oneDNN's blocked layout, for any row count.
char* fpt_onednn_pack(const at::Tensor* w, at::Tensor** out) {
  try {
    static const c10::OperatorHandle handle = op("mkldnn::_reorder_linear_weight");
    std::vector<c10::IValue> stack{w->contiguous(), c10::IValue()};
    handle.callBoxed(&stack);
    *out = new at::Tensor(stack[0].toTensor());
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// act(x W^T + b); with `packed_t` (W^T packed), "none" and differentiable in x.
char* fpt_onednn_linear(const at::Tensor* x, const at::Tensor* packed, const at::Tensor* bias,
                        const at::Tensor* packed_t, const char* attr, const char* algorithm,
                        at::Tensor** out) {
  try {
    if (packed_t != nullptr) {
      *out = new at::Tensor(FrozenLinear::apply(*x, *packed, *bias, *packed_t));
    } else {
      *out = new at::Tensor(linear_pointwise(*x, *packed, *bias, attr, algorithm));
    }
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

}  // extern "C"
