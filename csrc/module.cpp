// The Python module fastscore._C. Importing it registers the CPU (and, when built, CUDA)
// kernels of the fastscore:: ops, whose schemas fastscore/ops.py defines, and exposes
// the plain eager doors that the op families declare with FASTSCORE_PLAIN (plain.h).
#include "plain.h"

namespace {

// plain_like(x, *ys) -> bool: True when x and every y are plain torch.Tensor objects (no
// subclass), on the CPU, of one float dtype and x's sizes, none requiring grad: the common
// eager case, for which ops.py skips its argument checks. False sends the call to the full
// checks, which name what is wrong. (In Python these ten attribute reads cost ~3 µs.)
PyObject* plain_like(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 1 || !THPVariable_CheckExact(args[0])) Py_RETURN_FALSE;
  const at::Tensor& x = THPVariable_Unpack(args[0]);
  const at::ScalarType dtype = x.scalar_type();
  if (!x.defined() || !x.is_cpu() || x.requires_grad() ||
      !(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16)) {
    Py_RETURN_FALSE;
  }
  for (Py_ssize_t i = 1; i < nargs; ++i) {
    if (!THPVariable_CheckExact(args[i])) Py_RETURN_FALSE;
    const at::Tensor& y = THPVariable_Unpack(args[i]);
    if (!y.defined() || !y.is_cpu() || y.requires_grad() || y.scalar_type() != dtype || y.sizes() != x.sizes()) {
      Py_RETURN_FALSE;
    }
  }
  Py_RETURN_TRUE;
}

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static std::vector<PyMethodDef> methods;
  methods = fastscore::plain::methods();
  methods.push_back({"plain_like", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&plain_like)),
                     METH_FASTCALL, "True for plain CPU float tensors like x, none requiring grad."});
  methods.push_back({nullptr, nullptr, 0, nullptr});
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods.data()};
  return PyModule_Create(&module_def);
}
}
