"""CUDA kernel source compiled for the CPU, its blocks' threads run in lockstep between barriers.

CI has no GPU; this runs the same kernel source CuPy compiles, so that the tests can compare
what the kernels compute — threads, barriers, warp shuffles and atomics included — with the C
engine and the dense references on every run. `CudaOnCpu(source)` compiles it with g++ as C++
after `SHIM` (below); ``kernels(name, blocks, threads, args)`` launches a kernel with the
arguments a CuPy `RawModule` function takes (NumPy arrays for device arrays, NumPy scalars).

How a launch runs: blocks one after another; the threads of a block are coroutines (their own
stacks, entered with ucontext and switched with _setjmp/_longjmp), all on one OS thread, run in
phases: each thread runs until it waits — at `__syncthreads()`, or at a warp shuffle — or ends;
then the waits that every thread concerned has reached are completed: the barrier when all the
block's threads are at it, a shuffle when all 32 lanes of the warp are (each lane then gets the
value its source lane sent). A thread that ends while others wait at a barrier, a warp whose
lanes wait at different things, and a block where nothing can go on are errors (a launch raises
`ShimError`), not hangs. Threads never run at the same time, so an `atomicAdd` (a read, an add, a
write with no wait between) is atomic; the order of the threads is fixed, so results are
reproducible. ``__shared__`` variables are function statics: one per kernel, shared by the block
(and left over from the previous block, as uninitialised shared memory may be).

Emulated: ``__global__``, ``__device__``, ``__forceinline__``, ``__launch_bounds__``,
``__shared__``, ``threadIdx``, ``blockIdx``, ``blockDim``, ``gridDim`` (1-D launches),
``__syncthreads``, ``__shfl_xor_sync``, ``__shfl_down_sync`` (full masks only; a partial last
warp shuffles among the lanes it has, a source lane beyond them giving the lane's own value),
``atomicAdd`` (float, double, int, unsigned long long); a shuffle with another mask is
refused. ``-DSHIM_NO_BARRIER`` makes ``__syncthreads`` a no-op: the shim's own test shows that a
kernel that needs the barrier then fails. ``-DSHIM_REVERSE`` runs each phase's threads last to
first: a kernel whose result changes with it has a race between two accesses of one phase
(lockstep phases cannot show a race across a wait).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

SHIM = r"""
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict

struct dim3 { unsigned x, y, z; };

namespace shim {
enum State { READY, AT_BARRIER, AT_SHUFFLE, DONE };
enum Shuffle { XOR, DOWN };
const int WARP = 32;
const size_t STACK = 64 * 1024;

struct Thread {
    dim3 idx;
    State state;
    bool started;
    jmp_buf env;
    ucontext_t context;
    unsigned long long value;  // a shuffle's value sent, then received
    int shuffle, operand;      // its kind and lane mask / delta
};

static std::vector<Thread> threads;
static std::vector<char> stacks;
static Thread* current;
static jmp_buf scheduler;
static void (*body)(void**);
static void** body_args;
static char message[512];
static bool refused;  // a thread asked for what the shim does not emulate

static void entry() {
    body(body_args);
    current->state = DONE;
    _longjmp(scheduler, 1);
}

static void wait_as(State state) {  // back to the scheduler until the wait is over
    current->state = state;
    if (!_setjmp(current->env))
        _longjmp(scheduler, 1);
}

static int fail(const char* what, unsigned block, int thread) {
    snprintf(message, sizeof message, "block %u, thread %d: %s", block, thread, what);
    return 1;
}

// the shuffles of a warp whose lanes [first, end) all wait at one → each lane's value
static int exchange(int first, int end, unsigned block) {
    unsigned long long sent[WARP];
    const int kind = threads[first].shuffle;
    for (int i = first; i < end; i++) {
        if (threads[i].state != AT_SHUFFLE)
            return 0;  // not all there yet (or a mismatch, found below)
        if (threads[i].shuffle != kind)
            return -fail("lanes of one warp wait at different shuffles", block, i);
        sent[i - first] = threads[i].value;
    }
    for (int i = first; i < end; i++) {
        const int lane = i - first, op = threads[i].operand;
        int source = kind == XOR ? lane ^ op : lane + op;
        if (source < 0 || source >= end - first)
            source = lane;
        threads[i].value = sent[source];
        threads[i].state = READY;
    }
    return 1;
}

// one block: phases until every thread is done; 0, or 1 with `message` set
static int run_block(unsigned block, unsigned count) {
    if (stacks.size() < count * STACK)
        stacks.resize(count * STACK);
    threads.assign(count, Thread());
    for (unsigned i = 0; i < count; i++) {
        Thread& t = threads[i];
        t.idx.x = i, t.idx.y = 0, t.idx.z = 0;
        t.state = READY;
        t.started = false;
        getcontext(&t.context);
        t.context.uc_stack.ss_sp = stacks.data() + i * STACK;
        t.context.uc_stack.ss_size = STACK;
        t.context.uc_link = NULL;
        makecontext(&t.context, entry, 0);
    }
    for (;;) {
        static unsigned i;  // static: not a register that _longjmp could restore stale
        for (i = 0; i < count; i++) {
#ifdef SHIM_REVERSE
            Thread* next = &threads[count - 1 - i];
#else
            Thread* next = &threads[i];
#endif
            if (next->state != READY)
                continue;
            current = next;
            if (!_setjmp(scheduler)) {
                if (!current->started) {
                    current->started = true;
                    setcontext(&current->context);
                }
                _longjmp(current->env, 1);
            }
        }
        if (refused)
            return 1;
        // every thread now waits or is done: complete what can be completed
        unsigned done = 0, barrier = 0, released = 0;
        for (unsigned j = 0; j < count; j++) {
            done += threads[j].state == DONE;
            barrier += threads[j].state == AT_BARRIER;
        }
        if (done == count)
            return 0;
        if (barrier == count) {
            for (unsigned j = 0; j < count; j++)
                threads[j].state = READY;
            continue;
        }
        if (barrier > 0 && done > 0)
            for (unsigned j = 0; j < count; j++)
                if (threads[j].state == DONE)
                    return fail("returned while other threads wait at __syncthreads()", block, j);
        for (unsigned first = 0; first < count; first += WARP) {
            const unsigned end = first + WARP < count ? first + WARP : count;
            const int result = exchange(first, end, block);
            if (result < 0)
                return 1;
            released += result;
            if (result == 0)
                for (unsigned j = first; j < end; j++)
                    if (threads[j].state == AT_SHUFFLE) {  // some lanes shuffle, others not
                        for (unsigned k = first; k < end; k++)
                            if (threads[k].state != AT_SHUFFLE)
                                return fail(threads[k].state == DONE
                                            ? "returned while its warp waits at a shuffle"
                                            : "at __syncthreads() while its warp waits at a "
                                              "shuffle", block, k);
                    }
        }
        if (released == 0)
            return fail("no thread can go on (deadlock)", block, 0);
    }
}

template <typename T>
static T shuffle(T value, int kind, int operand) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a wide type");
    memcpy(&current->value, &value, sizeof(T));
    current->shuffle = kind;
    current->operand = operand;
    wait_as(AT_SHUFFLE);
    T received;
    memcpy(&received, &current->value, sizeof(T));
    return received;
}
}  // namespace shim

static dim3 blockIdx, blockDim, gridDim;
#define threadIdx (shim::current->idx)

#ifdef SHIM_NO_BARRIER
static inline void __syncthreads() {}
#else
static inline void __syncthreads() { shim::wait_as(shim::AT_BARRIER); }
#endif

static void check_mask(unsigned mask) {  // reported when the phase ends
    if (mask != 0xffffffffu && !shim::refused)
        shim::refused = snprintf(shim::message, sizeof shim::message, "block %u, thread %u: "
                                 "shuffle mask %#x (only full warps are emulated)", blockIdx.x,
                                 threadIdx.x, mask) > 0;
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
    check_mask(mask);
    return shim::shuffle(value, shim::XOR, lane_mask);
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
    check_mask(mask);
    return shim::shuffle(value, shim::DOWN, (int)delta);
}

// threads take turns and never wait inside these: each is atomic
static inline float atomicAdd(float* p, float v) { float old = *p; *p = old + v; return old; }
static inline double atomicAdd(double* p, double v) { double old = *p; *p = old + v; return old; }
static inline int atomicAdd(int* p, int v) { int old = *p; *p = old + v; return old; }
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    unsigned long long old = *p; *p = old + v; return old;
}

namespace shim {
template <typename... A, size_t... I>
static void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(args[I])...);
}
template <typename... A>
static int launch(void (*kernel)(A...), void (*thunk)(void**), unsigned blocks,
                  unsigned threads_per_block, void** args) {
    (void)kernel;
    body = thunk;
    body_args = args;
    refused = false;
    gridDim.x = blocks, gridDim.y = gridDim.z = 1;
    blockDim.x = threads_per_block, blockDim.y = blockDim.z = 1;
    blockIdx.y = blockIdx.z = 0;
    for (unsigned b = 0; b < blocks; b++) {
        blockIdx.x = b;
        if (run_block(b, threads_per_block))
            return 1;
    }
    return 0;
}
}  // namespace shim

extern "C" const char* shim_message() { return shim::message; }
"""

# one entry point per kernel: shim_<name>(blocks, threads, args), args as cuLaunchKernel's
LAUNCHER = r"""
static void thunk_{name}(void** args) {{
    shim::call({name}, args, std::make_index_sequence<{arity}>());
}}
extern "C" int shim_{name}(unsigned blocks, unsigned threads, void** args) {{
    return shim::launch({name}, thunk_{name}, blocks, threads, args);
}}
"""

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?'
                     r'(\w+)\s*\(([^)]*)\)', re.S)
_SCALARS = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
            np.dtype(np.uint32): ctypes.c_uint32, np.dtype(np.uint64): ctypes.c_uint64,
            np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


class ShimError(RuntimeError):
    """A launch the shim refused: a barrier or shuffle not every thread concerned reaches."""


def kernel_signatures(source: str) -> dict[str, int]:
    """``{kernel name: number of parameters}`` of the ``extern "C" __global__`` kernels."""
    signatures = {}
    for name, params in _KERNEL.findall(re.sub(r"//[^\n]*", "", source)):
        signatures[name] = len([p for p in params.split(",") if p.strip()])
    return signatures


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


class CudaOnCpu:
    """``source``'s kernels compiled for the CPU with the shim; ``defines``: extra macros
    (e.g. ``SHIM_NO_BARRIER``). Call as a CuPy kernel: ``kernels(name, blocks, threads,
    args)`` with NumPy arrays (C-contiguous) and NumPy scalars."""

    def __init__(self, source: str, defines: tuple[str, ...] = (), folder: str | None = None):
        self.signatures = kernel_signatures(source)
        text = SHIM + source + "".join(LAUNCHER.format(name=name, arity=arity)
                                       for name, arity in self.signatures.items())
        flags = ["-O1", "-std=c++17", "-shared", "-fPIC", "-U_FORTIFY_SOURCE",
                 "-Wno-unknown-pragmas", *(f"-D{d}" for d in defines)]
        digest = hashlib.sha256((text + " ".join(flags)).encode()).hexdigest()[:16]
        folder = folder or tempfile.mkdtemp(prefix="cuda_shim_")
        library = os.path.join(folder, f"kernels_{digest}.so")
        if not os.path.exists(library):
            source_path = os.path.join(folder, f"kernels_{digest}.cpp")
            with open(source_path, "w") as f:
                f.write(text)
            out = subprocess.run([compiler(), *flags, source_path, "-o", library],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"g++ could not compile the kernels for the CPU:\n"
                                   f"{out.stderr[-4000:]}")
        self.library = ctypes.CDLL(library)
        self.library.shim_message.restype = ctypes.c_char_p

    def __call__(self, name: str, blocks: int, threads: int, args: tuple) -> None:
        if len(args) != self.signatures[name]:
            raise TypeError(f"{name} takes {self.signatures[name]} arguments, got {len(args)}")
        if blocks <= 0:
            return
        values = []  # kept alive for the call
        for arg in args:
            if isinstance(arg, np.ndarray):
                if not arg.flags.c_contiguous:
                    raise ValueError(f"{name}: arrays must be C-contiguous")
                values.append(ctypes.c_void_p(arg.ctypes.data))
            elif isinstance(arg, np.generic) and arg.dtype in _SCALARS:
                values.append(_SCALARS[arg.dtype](arg.item()))
            else:
                raise TypeError(f"{name}: an argument of type {type(arg).__name__}: pass NumPy "
                                "arrays and NumPy scalars, as to CuPy")
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        launcher = getattr(self.library, f"shim_{name}")
        if launcher(ctypes.c_uint(blocks), ctypes.c_uint(threads), pointers):
            raise ShimError(f"{name}: {self.library.shim_message().decode()}")
