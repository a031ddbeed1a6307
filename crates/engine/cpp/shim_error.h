// How the engine's shims hand an error to Rust: a malloc'd copy of the message, which
// the caller frees with plenum_aoti_free_error (see aoti_shim.cpp).
#pragma once

#include <cstdlib>
#include <cstring>

namespace plenum {
inline char* copy_message(const char* what) {
    size_t n = std::strlen(what);
    char* out = static_cast<char*>(std::malloc(n + 1));
    if (out != nullptr) std::memcpy(out, what, n + 1);
    return out;
}
}  // namespace plenum
