// The Python module fastscore._C. Importing it registers the CPU (and, when built, CUDA)
// kernels of the fastscore:: ops, whose schemas fastscore/ops.py defines, and exposes
// the plain eager doors that the op families declare with FASTSCORE_PLAIN (plain.h).
#include "plain.h"

extern "C" {
PyObject* PyInit__C(void) {
  static std::vector<PyMethodDef> methods;
  methods = fastscore::plain::methods();
  methods.push_back({nullptr, nullptr, 0, nullptr});
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods.data()};
  return PyModule_Create(&module_def);
}
}
