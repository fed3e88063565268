"""Microcontroller firmware: TFLite Micro built for a Cortex-M core, run on an emulated or real board.

``sources`` fetches and caches the pinned C/C++ sources, ``boards`` holds the cores' and boards'
facts, ``build`` writes and links a firmware project for a model, ``protocol`` is the host side of
the harness's UART protocol (for any byte stream: the emulator, a serial port), and ``emulate`` runs
a firmware in ``qemu-system-arm``.
"""
