// Python bindings of the C++ pre- and post-processing (s2e/tasks.hpp): sapiens2_edge._native.tasks.
#pragma once

#include <pybind11/pybind11.h>

void bind_tasks(pybind11::module_& m);
