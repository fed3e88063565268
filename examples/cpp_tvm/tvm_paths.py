"""Print where the apache-tvm and apache-tvm-ffi wheels keep the headers and shared libraries the
C++ example builds against, as ``make`` variable assignments:

    $ python tvm_paths.py
    TVM_FFI_INCLUDE=/.../site-packages/tvm_ffi/include
    TVM_LIB_DIR=/.../site-packages/tvm/lib
    TVM_FFI_LIB_DIR=/.../site-packages/tvm_ffi/lib

``python tvm_paths.py NAME`` prints one value. The packages are found, not imported (importing TVM
takes seconds).
"""

import importlib.util
import sys
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: the Python package '{name}' is not installed here ({sys.executable}); "
                 "pip install 'edgedl[tvm]'")
    return Path(list(spec.submodule_search_locations)[0])


def paths() -> dict:
    tvm, ffi = package_dir("tvm"), package_dir("tvm_ffi")
    found = {"TVM_FFI_INCLUDE": ffi / "include", "TVM_LIB_DIR": tvm / "lib", "TVM_FFI_LIB_DIR": ffi / "lib"}
    needed = [found["TVM_FFI_INCLUDE"] / "tvm" / "ffi" / "extra" / "module.h",
              found["TVM_FFI_INCLUDE"] / "dlpack" / "dlpack.h",
              found["TVM_LIB_DIR"] / "libtvm_runtime.so", found["TVM_FFI_LIB_DIR"] / "libtvm_ffi.so"]
    for path in needed:
        if not path.exists():
            sys.exit(f"error: {path} is missing: this TVM install has no C++ headers or runtime library")
    return {k: str(v) for k, v in found.items()}


if __name__ == "__main__":
    found = paths()
    if len(sys.argv) > 1:
        print(found[sys.argv[1]])
    else:
        print("\n".join(f"{k}={v}" for k, v in found.items()))
