// The Python module fastscore._C: importing it registers the ops (TORCH_LIBRARY
// fragments in the other sources); it exposes no Python functions of its own.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
