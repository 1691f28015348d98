"""C kernels for the hot loops PyTorch's operators cannot fuse on a CPU, compiled on first
use with the machine's C compiler and cached (:mod:`l2lbench.fastpath.native.build`). Every kernel
has a PyTorch form that runs where the kernel cannot (no compiler, CUDA, autograd on, other
dtypes, ``L2LBENCH_NATIVE=0``) and that the tests hold it equal to."""
