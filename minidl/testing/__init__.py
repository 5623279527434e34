"""Tools for checking minidl itself: the CUDA-on-CPU shim and the NVRTC compile check."""
