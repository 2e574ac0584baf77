// The plain eager door of the cpp backend: each op's CPU implementation exposed as a
// function of fastscore._C (METH_FASTCALL), called by fastscore/ops.py for eager calls
// that need neither autograd nor tracing. It runs the SAME C++ function the dispatcher
// runs for torch.ops.fastscore.<op> on CPU tensors, without the dispatcher's per-call
// cost (boxing, schema parsing, which exceed the kernel itself at 2x4096). What the
// dispatcher would do besides is done here: the version counters of mutated tensors are
// bumped, so autograd still sees the in-place update.
//
//     FASTSCORE_PLAIN(step_, step_cpu, 0, 1);   // name, function, indices of mutated args
//
// converts the Python arguments by the function's own parameter types.
#pragma once
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>

#include <exception>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastscore {
namespace plain {

// ------------------------------------------------------------------ arguments

template <typename T>
struct Arg;

template <>
struct Arg<at::Tensor> {
  using Storage = at::Tensor;
  static bool convert(PyObject* o, Storage& s) {
    if (!THPVariable_Check(o)) return false;
    s = THPVariable_Unpack(o);
    return true;
  }
  static Storage& get(Storage& s) { return s; }
  static void bump(Storage& s) { torch::autograd::impl::bump_version(s); }
};

template <>
struct Arg<c10::optional<at::Tensor>> {
  using Storage = c10::optional<at::Tensor>;
  static bool convert(PyObject* o, Storage& s) {
    if (o == Py_None) return true;
    if (!THPVariable_Check(o)) return false;
    s = THPVariable_Unpack(o);
    return true;
  }
  static Storage& get(Storage& s) { return s; }
  static void bump(Storage& s) {
    if (s.has_value()) torch::autograd::impl::bump_version(*s);
  }
};

template <>
struct Arg<int64_t> {
  using Storage = int64_t;
  static bool convert(PyObject* o, Storage& s) {
    s = PyLong_AsLongLong(o);
    return !(s == -1 && PyErr_Occurred());
  }
  static Storage get(Storage& s) { return s; }
};

template <>
struct Arg<double> {
  using Storage = double;
  static bool convert(PyObject* o, Storage& s) {
    s = PyFloat_AsDouble(o);
    return !(s == -1.0 && PyErr_Occurred());
  }
  static Storage get(Storage& s) { return s; }
};

template <>
struct Arg<bool> {
  using Storage = bool;
  static bool convert(PyObject* o, Storage& s) {
    const int v = PyObject_IsTrue(o);
    s = v == 1;
    return v >= 0;
  }
  static Storage get(Storage& s) { return s; }
};

// A Python list or tuple, item by item.
template <typename Fn>
inline bool for_each_item(PyObject* o, Fn&& fn) {
  PyObject* seq = PySequence_Fast(o, "expected a list");
  if (seq == nullptr) return false;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  bool ok = true;
  for (Py_ssize_t i = 0; i < n && ok; ++i) ok = fn(items[i]);
  Py_DECREF(seq);
  return ok;
}

template <>
struct Arg<at::TensorList> {
  using Storage = std::vector<at::Tensor>;
  static bool convert(PyObject* o, Storage& s) {
    return for_each_item(o, [&](PyObject* item) {
      if (!THPVariable_Check(item)) return false;
      s.push_back(THPVariable_Unpack(item));
      return true;
    });
  }
  static at::TensorList get(Storage& s) { return s; }
};

template <>
struct Arg<c10::ArrayRef<double>> {
  using Storage = std::vector<double>;
  static bool convert(PyObject* o, Storage& s) {
    return for_each_item(o, [&](PyObject* item) {
      const double v = PyFloat_AsDouble(item);
      s.push_back(v);
      return !(v == -1.0 && PyErr_Occurred());
    });
  }
  static c10::ArrayRef<double> get(Storage& s) { return s; }
};

template <>
struct Arg<c10::ArrayRef<int64_t>> {
  using Storage = std::vector<int64_t>;
  static bool convert(PyObject* o, Storage& s) {
    return for_each_item(o, [&](PyObject* item) {
      const long long v = PyLong_AsLongLong(item);
      s.push_back(v);
      return !(v == -1 && PyErr_Occurred());
    });
  }
  static c10::ArrayRef<int64_t> get(Storage& s) { return s; }
};

// ------------------------------------------------------------------ results

inline PyObject* to_python(at::Tensor t) { return THPVariable_Wrap(std::move(t)); }

inline PyObject* to_python(const char* s) { return PyUnicode_FromString(s); }

inline PyObject* to_python(std::tuple<at::Tensor, at::Tensor> t) {
  PyObject* a = THPVariable_Wrap(std::move(std::get<0>(t)));
  PyObject* b = THPVariable_Wrap(std::move(std::get<1>(t)));
  if (a == nullptr || b == nullptr) {
    Py_XDECREF(a);
    Py_XDECREF(b);
    return nullptr;
  }
  PyObject* tuple = PyTuple_Pack(2, a, b);
  Py_DECREF(a);
  Py_DECREF(b);
  return tuple;
}

// ------------------------------------------------------------------ the call

template <typename F>
struct Signature;

template <typename R, typename... P>
struct Signature<R (*)(P...)> {
  using Result = R;
  using Args = std::tuple<Arg<std::decay_t<P>>...>;
  using Storage = std::tuple<typename Arg<std::decay_t<P>>::Storage...>;
  static constexpr size_t arity = sizeof...(P);
};

template <auto Fn, size_t... Mutated>
PyObject* call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  using S = Signature<decltype(Fn)>;
  if (nargs != static_cast<Py_ssize_t>(S::arity)) {
    PyErr_Format(PyExc_TypeError, "fastscore._C: expected %zd arguments, got %zd", static_cast<Py_ssize_t>(S::arity),
                 nargs);
    return nullptr;
  }
  typename S::Storage storage;
  bool ok = true;
  size_t bad = 0;
  [&]<size_t... I>(std::index_sequence<I...>) {
    ((ok = ok && (bad = I, std::tuple_element_t<I, typename S::Args>::convert(args[I], std::get<I>(storage)))), ...);
  }(std::make_index_sequence<S::arity>{});
  if (!ok) {
    if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "fastscore._C: argument %zd has the wrong type", bad);
    return nullptr;
  }
  try {
    auto invoke = [&]() {
      return [&]<size_t... I>(std::index_sequence<I...>) {
        return Fn(std::tuple_element_t<I, typename S::Args>::get(std::get<I>(storage))...);
      }(std::make_index_sequence<S::arity>{});
    };
    if constexpr (std::is_void_v<typename S::Result>) {
      Py_BEGIN_ALLOW_THREADS
      invoke();
      Py_END_ALLOW_THREADS
      (std::tuple_element_t<Mutated, typename S::Args>::bump(std::get<Mutated>(storage)), ...);
      Py_RETURN_NONE;
    } else {
      typename S::Result result;
      Py_BEGIN_ALLOW_THREADS
      result = invoke();
      Py_END_ALLOW_THREADS
      return to_python(std::move(result));
    }
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

// ------------------------------------------------------------------ the registry fastscore._C reads

inline std::vector<PyMethodDef>& methods() {
  static std::vector<PyMethodDef> table;
  return table;
}

struct Register {
  Register(const char* name, PyObject* (*fn)(PyObject*, PyObject* const*, Py_ssize_t)) {
    methods().push_back({name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn)), METH_FASTCALL,
                         "The plain eager door of the op (see fastscore/ops.py)."});
  }
};

}  // namespace plain
}  // namespace fastscore

// Exposes CPU implementation `fn` as fastscore._C.<name>; the trailing indices name the
// arguments it mutates (their version counters are bumped after the call).
#define FASTSCORE_PLAIN(name, fn, ...) \
  static ::fastscore::plain::Register fastscore_plain_##name(#name, &::fastscore::plain::call<&fn, ##__VA_ARGS__>)
