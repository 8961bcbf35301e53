// The Python module `mona_ext._C`. Importing it runs the static TORCH_LIBRARY registrations of
// every op in csrc/ (torch.ops.mona.*). It exposes only what was compiled in, so that
// mona_ext can refuse a binary built against another torch. This is the only file that includes
// Python.h; no pybind11 (the ops are reached through torch.ops, not through this module).
#include <Python.h>

#ifndef MONA_TORCH_VERSION
#error "MONA_TORCH_VERSION must be defined by the build (setup.py / CMakeLists.txt)"
#endif

#ifdef MONA_WITH_CUDA
#define MONA_HAS_CUDA_KERNELS 1
#else
#define MONA_HAS_CUDA_KERNELS 0
#endif

namespace {

PyObject* compiled_with(PyObject*, PyObject*) {
  return Py_BuildValue("{s:s,s:O}", "torch_version", MONA_TORCH_VERSION, "cuda",
                       MONA_HAS_CUDA_KERNELS ? Py_True : Py_False);
}

PyMethodDef methods[] = {{"compiled_with", compiled_with, METH_NOARGS,
                          "What this binary was compiled with: {'torch_version': str, 'cuda': bool}."},
                         {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "mona C++/CUDA kernels (torch.ops.mona.*)", -1, methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
