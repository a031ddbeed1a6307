// The engine's one piece of C++: loads an AOTInductor package with libtorch's
// AOTIModelPackageLoader and runs it on one tensor. Tensors cross as tch's
// tensors (`torch::Tensor*`, what tch's C_tensor points at); errors cross as a
// malloc'd message the caller frees with plenum_aoti_free_error. No C++
// exception leaves this file.

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

using torch::inductor::AOTIModelPackageLoader;

#include "shim_error.h"

using plenum::copy_message;

extern "C" {

// Loads the package at `path` for the CPU; on failure returns null and sets *error.
void* plenum_aoti_load(const char* path, char** error) {
    *error = nullptr;
    try {
        return new AOTIModelPackageLoader(std::string(path));
    } catch (const std::exception& e) {
        *error = copy_message(e.what());
    } catch (...) {
        *error = copy_message("unknown C++ exception while loading the package");
    }
    return nullptr;
}

void plenum_aoti_free(void* package) {
    delete static_cast<AOTIModelPackageLoader*>(package);
}

// Runs the package on `input` (an at::Tensor*) and returns its only output as a new
// at::Tensor* owned by the caller; on failure returns null and sets *error.
void* plenum_aoti_run(void* package, const void* input, char** error) {
    *error = nullptr;
    try {
        auto* loader = static_cast<AOTIModelPackageLoader*>(package);
        std::vector<at::Tensor> inputs{*static_cast<const at::Tensor*>(input)};
        std::vector<at::Tensor> outputs = loader->run(inputs);
        if (outputs.size() != 1) {
            *error = copy_message(("the package returned " + std::to_string(outputs.size()) +
                                   " outputs, not 1").c_str());
            return nullptr;
        }
        return new at::Tensor(std::move(outputs[0]));
    } catch (const std::exception& e) {
        *error = copy_message(e.what());
    } catch (...) {
        *error = copy_message("unknown C++ exception while running the package");
    }
    return nullptr;
}

void plenum_aoti_free_error(char* error) {
    std::free(error);
}

}  // extern "C"
