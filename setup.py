from setuptools import find_packages, setup

setup(
    name="minidl",
    version="0.1.0",
    description="A deep-learning framework written to be read: autograd, im2col convolutions, "
                "AlexNet and EuroNet on NumPy/Numba (CPU) and CuPy (GPU)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["minidl", "minidl.*"]),
    package_data={"minidl": ["*.cu", "ops/*.cu", "ops/*.cuh", "testing/*.h"]},
    install_requires=[
        "numpy>=1.24",       # arrays and the CPU matrix products (OpenBLAS)
        "numba>=0.58",       # compiled CPU loops: im2col, Winograd's transforms, pooling, LRN
        "threadpoolctl>=3.1",  # one BLAS thread per product while minidl's threads run many
        "pillow>=9.0",       # JPEG/PNG decoding, the pictures and the training curves
        "tqdm>=4.60",        # progress bars in training
        "tifffile>=2022.5",  # EuroSAT's 13-band GeoTIFFs
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "scikit-learn>=1.0",            # the bundled handwritten digits for the end-to-end test
            "nvidia-cuda-nvrtc==13.0.*",    # NVRTC, to compile the CUDA sources without a GPU
        ],
        # Data-parallel training over processes and machines (minidl.distributed): MPI's Python
        # binding, and MPICH as a wheel, so that mpiexec works with no system MPI. On a cluster,
        # build mpi4py against the cluster's own MPI instead (README).
        "mpi": ["mpi4py>=4.0", "mpich>=4.1"],
        # CuPy with its [ctk] extra, which brings the CUDA parts it loads at run time (NVRTC,
        # the CUDA headers NVRTC compiles against, cuBLAS, the runtime) as wheels: without
        # them a machine with only the NVIDIA driver sees a GPU but cannot compile a kernel or
        # run a product. [ctk] exists from CuPy 14.0; 14.1 is the first whose header look-up
        # finds those wheels' headers. CuPy 14 needs Python 3.10 or newer, so on 3.9 these
        # extras fail to resolve (pip names the Python version) instead of silently installing
        # a CuPy 13 without the toolkit. CUDA 13: "cuda"; CUDA 12: "cuda12" (docs/GPU.md).
        "cuda": ["cupy-cuda13x[ctk]>=14.1"],
        "cuda12": ["cupy-cuda12x[ctk]>=14.1"],
    },
)
