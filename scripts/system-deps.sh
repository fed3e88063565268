#!/bin/sh
# Install the Debian packages edgedl's tests use, if they are missing and we may (root with apt-get).
# --plan only says what it would do.
set -e
need=""
for pair in aarch64-linux-gnu-gcc:gcc-aarch64-linux-gnu arm-linux-gnueabihf-gcc:gcc-arm-linux-gnueabihf g++:g++ chromium:chromium \
            arm-none-eabi-gcc:gcc-arm-none-eabi /usr/lib/arm-none-eabi/newlib/thumb/v7e-m/nofp/libc.a:libnewlib-arm-none-eabi \
            /usr/lib/arm-none-eabi/newlib/thumb/v7e-m/nofp/libstdc++.a:libstdc++-arm-none-eabi-newlib qemu-system-arm:qemu-system-arm \
            aarch64-linux-gnu-g++:g++-aarch64-linux-gnu qemu-aarch64-static:qemu-user-static; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  case $cmd in
    /*) [ -e "$cmd" ] || need="$need $pkg" ;;
    *) command -v "$cmd" >/dev/null 2>&1 || need="$need $pkg" ;;
  esac
done
why="cross compilers for TVM's Arm builds, g++ for the C++ example, chromium for the tests that render HTML, the Arm bare-metal toolchain and QEMU for Cortex-M firmware, qemu-user and the aarch64 g++ to check TVM's aarch64 builds under emulation"
may=no
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then may=yes; fi
if [ "$1" = "--plan" ]; then
  if [ -z "$need" ]; then
    echo "Debian packages: all there"
  elif [ $may = yes ]; then
    echo "Debian packages to install with apt-get:$need ($why; a few minutes)"
  else
    echo "Debian packages missing:$need ($why); not root with apt-get, so those tests will skip"
  fi
  exit 0
fi
[ -z "$need" ] && exit 0
if [ $may = yes ]; then
  echo "installing Debian packages with apt-get:$need (a few minutes)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
else
  echo "note: missing$need; the tests that need them will skip (install: apt-get install$need)"
fi
