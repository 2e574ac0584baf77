// The Python module fastscore._C. Importing it registers the ops (TORCH_LIBRARY
// fragments in the other sources). It also exposes one function, step_fast, the eager
// CPU fast path of step_/langevin_step_: arguments already checked by fastscore/ops.py,
// no dispatcher round trip (which costs more than the kernel on a 2x4096 batch).
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>

#include <exception>

#include "op_common.h"
#include "step_cpu.h"

namespace {

// step_fast(x, score, a, b, c, seed, offset): x <- a*x + b*score + c*z in place.
PyObject* step_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 7 || !THPVariable_Check(args[0]) || !THPVariable_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "step_fast(x, score, a, b, c, seed, offset)");
    return nullptr;
  }
  const double a = PyFloat_AsDouble(args[2]), b = PyFloat_AsDouble(args[3]), c = PyFloat_AsDouble(args[4]);
  const long long seed = PyLong_AsLongLong(args[5]), offset = PyLong_AsLongLong(args[6]);
  if (PyErr_Occurred()) return nullptr;
  try {
    at::Tensor x = THPVariable_Unpack(args[0]);
    const at::Tensor score = THPVariable_Unpack(args[1]);
    const fastscore::SeedOffset so = fastscore::seed_offset(seed, offset);
    const double coef[3] = {a, b, c};
    Py_BEGIN_ALLOW_THREADS
    fastscore::step_cpu_impl(x, score, coef, 1, so, c10::nullopt, c10::nullopt, c != 0.0);
    Py_END_ALLOW_THREADS
    // What the dispatcher's in-place handling would do: autograd sees x changed.
    torch::autograd::impl::bump_version(x);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

// update_fast(out, x, score, a, b, c, seed, offset): out <- a*x + b*score + c*z.
PyObject* update_fast(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 8 || !THPVariable_Check(args[0]) || !THPVariable_Check(args[1]) || !THPVariable_Check(args[2])) {
    PyErr_SetString(PyExc_TypeError, "update_fast(out, x, score, a, b, c, seed, offset)");
    return nullptr;
  }
  const double a = PyFloat_AsDouble(args[3]), b = PyFloat_AsDouble(args[4]), c = PyFloat_AsDouble(args[5]);
  const long long seed = PyLong_AsLongLong(args[6]), offset = PyLong_AsLongLong(args[7]);
  if (PyErr_Occurred()) return nullptr;
  try {
    at::Tensor out = THPVariable_Unpack(args[0]);
    const at::Tensor x = THPVariable_Unpack(args[1]), score = THPVariable_Unpack(args[2]);
    const fastscore::SeedOffset so = fastscore::seed_offset(seed, offset);
    const double coef[3] = {a, b, c};
    Py_BEGIN_ALLOW_THREADS
    fastscore::update_cpu_impl(out, x, score, coef, 1, so, c10::nullopt, c != 0.0);
    Py_END_ALLOW_THREADS
    torch::autograd::impl::bump_version(out);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"update_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(update_fast)), METH_FASTCALL,
     "Eager CPU fast path of update (arguments checked by fastscore.ops)."},
    {"step_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(step_fast)), METH_FASTCALL,
     "Eager CPU fast path of step_ (arguments checked by fastscore.ops)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
