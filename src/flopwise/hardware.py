"""Accelerator catalogue and detection: the one source of device facts for the trainer and the planner.

Figures are the vendors' datasheet numbers for dense (no sparsity) tensor-core math:
- V100 SXM2 32GB: 125 TFLOP/s fp16 (no bf16 support; fp16 is its training precision), HBM2 900 GB/s,
  NVLink2 300 GB/s total = 150 GB/s per direction. (NVIDIA Tesla V100 datasheet.)
- A100 40GB / 80GB SXM: 312 TFLOP/s bf16, HBM2 1555 / HBM2e 2039 GB/s, NVLink3 600 GB/s total = 300 per
  direction. (NVIDIA A100 datasheet.)
- H100 SXM5 80GB: 989 TFLOP/s bf16, HBM3 3350 GB/s, NVLink4 900 GB/s total = 450 per direction.
- H100 PCIe 80GB: 756 TFLOP/s bf16, HBM2e 2000 GB/s; NVLink bridge 600 GB/s total = 300 per direction
  (pairs only; otherwise PCIe Gen5, 64 GB/s per direction). (NVIDIA H100 datasheet.)
- H200 SXM 141GB: 989 TFLOP/s bf16, HBM3e 4800 GB/s, NVLink4 450 GB/s per direction. (H200 datasheet.)
- A800 SXM4 80GB and H800 SXM5 80GB (the export variants of the A100 and H100: the same silicon, clocks, memory and
  FP8, NVLink cut to 400 GB/s total = 200 per direction; NVIDIA A800 and H800 datasheets). Their reference nodes
  are taken as the A100's and H100's (8 NICs of 200 / 400 Gb/s).
- H100 at 500 W (Meta Grand Teton: 96 GB HBM2e, 2.4 TB/s): the same silicon, clocked down by its power cap.
  Dense bf16 of the H100 parts against their power: NVL 835 TFLOP/s at 400 W, SXM 989 at 700 W (datasheets);
  linear between them, 500 W gives ~886, 0.9 of the SXM, so its gemm_efficiency is 0.9 x the SXM's 0.70.
- FP8 (Hopper): 1979 TFLOP/s dense on H100 SXM and H200, 1513 on H100 PCIe (the datasheets' 2x-with-sparsity
  figures halved). Parts without FP8 tensor cores have fp8_peak_flops = 0 and the planner refuses fp8 on them.
- network_bandwidth: the NIC rate per GPU and direction of the vendor's reference node, the planner's default
  inter-node link: DGX A100 8 x HDR 200 Gb/s = 25 GB/s; DGX H100 / H200 8 x NDR 400 Gb/s = 50 GB/s.
- fp32 and TF32 (dense; the datasheets' TF32 figures are given with sparsity, halved here): fp32_peak_flops is the
  CUDA cores' IEEE FP32 rate, which fp32 GEMMs run at with TF32 off (PyTorch's default for matmuls since 1.12);
  tf32_peak_flops the TF32 tensor-core rate. V100 15.7 / none, A100 19.5 / 156, H100 SXM and H200 67 / 494.5 (also
  GH200 and Grand Teton's H100, the same die), H100 PCIe 51 / 378, B200 80 / 1100 (at 1000 W) and GB200 90 / 1250
  (at 1200 W; NVIDIA's per-GPU launch figures as compiled at glennklockwood.com/garden/processors/B200; NVIDIA's HGX
  table, not readable here, may differ by a few per cent), P100 PCIe 9.3 / none, T4 8.1 / none, A10 31.2 / 62.5.
  Before item 36 of issue 14 the planner costed every fp32 run at half the bf16 rate, the TF32 rate, whatever the
  script set.
Newer parts, from datasheets and at most a GEMM benchmark: no published run calibrates them (CALIBRATED below), so
each plan says so.
- FP4 (Blackwell, NVFP4 training): twice the FP8 rate, dense: 9000 TFLOP/s on B200 (DGX B200 datasheet: 144 PFLOP/s
  FP4 with sparsity over 8 GPUs), 10000 on GB200 (NVL72 datasheet: 1440 PFLOP/s FP4 with sparsity over 72).
- B200 SXM (HGX / DGX B200): 2250 TFLOP/s bf16 and 4500 FP8 dense, HBM3e 8 TB/s, 180 GB usable per GPU, NVLink 5
  1.8 TB/s total = 900 per direction; DGX B200 8 x ConnectX-7 400 Gb/s = 50 GB/s per GPU. (NVIDIA DGX B200
  datasheet.) gemm_efficiency 0.68: its bf16 MAMF is 0.776 of peak (1745 TFLOP/s, stas00/ml-engineering
  compute/accelerator at 744d01e), and the catalogue's sustained values sit at ~0.87 of the MAMF on the calibrated
  parts (A100 0.75 / 0.869, H100 SXM 0.70 / 0.803).
- GB200 (one Blackwell GPU of a Grace Blackwell superchip, in GB200 NVL72 racks): 2500 TFLOP/s bf16 and 5000 FP8
  dense, 186 GB of HBM3e at 8 TB/s (the NVL72 datasheet's rack figures over its 72 GPUs: 180 / 360 PFLOP/s dense,
  13.4 TB at 576 TB/s), NVLink 5 at 900 GB/s per direction across the whole rack: its NVLink domain is up to 72
  GPUs, so a cluster's gpus_per_node is the GPUs that share one domain (72 for a full rack), not the 4-GPU compute
  tray. ConnectX-7 400 Gb/s per GPU between racks = 50 GB/s. gemm_efficiency 0.60, from a GEMM benchmark, not
  from training runs: Azure's AI-benchmarking-guide times cuBLASLt FP8 GEMMs with one script (random inputs, 10,000
  warm-up iterations, the same shapes) on ND GB200 v6, ND H100 v5 and ND H200 v5 (Azure_Results/ND_GB200_v6_results.md
  at fa79995: CUDA 12.8, driver 570.133.20; ND_H200_v5_results.md at 7f20e5f and "Azure Results/ND_H100_v5_results.md"
  at f350e7e: CUDA 12.6, drivers 560.x). At the four shapes of 8192 and up the GB200 reaches 2826-2907 TFLOP/s, 0.58
  of its datasheet FP8 peak: 2.04-2.23x the H100 (median 2.13) and 2.09-2.21x the H200 (median 2.16). Carried onto
  the calibrated H100 (0.70) and H200 (0.72) that gives 0.589 and 0.616; 0.60 is their mean. The file's earlier
  version, on driver 570.99, read ~7% lower (0.55-0.57): the figure is not settled. Until 2026-12-05 it was the
  B200's 0.68 (the same silicon, the higher peak read as the 1200 W module's clocks), and the GB200 runs gathered
  blind then all ran slower than planned (benchmarks/planner_calibration/FINDINGS.md, section 25). Only FP8 was
  timed; bf16 is assumed to sit at the same fraction of its peak.
- GH200 (Grace Hopper superchip): the H100 / H200 die, 989 / 1979 TFLOP/s; `GH200` is the 96 GB HBM3 part at
  4.0 TB/s, `GH200-144GB` the 144 GB HBM3e part at 4.9 TB/s (NVIDIA GH200 datasheet). NVLink 4, 450 GB/s per
  direction. Its clusters put 4 per node with one 200 Gb/s NIC each (HPE Cray EX254n in CSCS Alps: Slingshot-11;
  JUPITER Booster: NDR200), 25 GB/s per GPU. gemm_efficiency 0.72, the H200's: the same die; its 900 W module
  measured a higher MAMF (0.838), not used until a run shows it.
- Their memory_bytes are the datasheets' decimal GB: no driver's memory.total was at hand to check.
- B300 and GB300 (Blackwell Ultra: NVIDIA's rates, no run seen before they were written; then four fresh holdouts,
  each judged by a rule declared before it: the forty-fifth's MLPerf runs put the B300 in CALIBRATED (4 runs, 6.8% /
  14.9%) and not the GB300 (8.1% / 15.9%), which missed again in the forty-sixth (7.7% / 26.8%) and forty-seventh (28
  Megatron-Bridge table rows, 13.9% / 27.2%: FP8 planned 22% too slow, NVFP4 9% too fast); the forty-eighth's took the
  B300 out (5 runs, 11.2% / 13.7%: its NVFP4 runs 9-14% too fast in every set, its FP8 ones within 3%) and the GB300
  in (6 runs, 6.7% / 20.5%)): 2250 / 2500 TFLOP/s bf16, 4500 / 5000 FP8 and 15000 NVFP4 dense (the DGX B300 and GB300
  NVL72 figures as tabulated in stas00/ml-engineering compute/accelerator/README.md at 744d01e; the same table lists
  12600 for the B300's other FP4 formats: the planner has one FP4 rate, NVFP4's, the MLPerf recipes' format), FP32 80,
  TF32 1125 / 1250; 288 GB HBM3e at 8 TB/s; NVLink 5 at 900 GB/s per direction (the GB300 across an NVL72 rack:
  nvlink_domain_gpus 72); ConnectX-8 800 Gb/s per GPU = 100 GB/s. gemm_efficiency by the B200's rule: the B300's bf16
  MAMF is 0.786 of its peak (1769 TFLOP/s), x 0.87 = 0.684; the GB300, not in the table, at the B300's fraction times
  the GB200's to the B200's in the same table (0.729 / 0.776), x 0.87 = 0.642.
- AMD Instinct (datasheets, a GEMM benchmark and an all-reduce measurement; no AMD run was seen before they were
  written; the forty-first fresh holdout, gathered blind, scored them once: 7 MLPerf Llama 3.1 8B FP8 runs on 8
  MI355X, MI350X and MI325X, median 4.8%, max 19.4%, so those three counted as calibrated (CALIBRATED), the MI300X
  not; the forty-third's 6 MXFP4 runs on MI355X, 14.6% too fast, took the MI355X out again).
  MI300X and MI325X (CDNA 3, the same compute:
  304 CUs at 2.1 GHz): 1307.4 TFLOP/s bf16 and 2614.9 FP8 (FNUZ formats) dense, FP32 matrix 163.4, TF32 (XF32) 653.7;
  192 GB HBM3 at 5.3 TB/s (MI300X, 750 W) and 256 GB HBM3e at 6.0 TB/s (MI325X, 1000 W). MI350X and MI355X (CDNA 4,
  256 CUs): 2307 and 2516.6 TFLOP/s bf16 (2.2 and 2.4 GHz), twice that FP8, MXFP8 at the FP8 rate, FP32 157.3 on the
  MI355X (taken for both), no TF32; 288 GB HBM3e at 8 TB/s. (AMD Instinct MI300X / MI325X / MI350X / MI355X
  specifications, as tabulated in stas00/ml-engineering compute/accelerator/README.md at 744d01e.) CDNA 4's FP4 is
  the OCP MXFP4 (and MXFP6), twice its FP8 rate dense (10066 TFLOP/s on the MI355X), not NVIDIA's NVFP4: nvfp4
  False. Memory in binary sizes, as
  the HBM stacks come (8 x 24 / 32 / 36 GiB), not checked against a driver. Infinity Fabric joins the 8 GPUs of a node
  as a fully connected mesh: 64 GB/s per direction between each pair on CDNA 3 (448 all-to-all), 76.5 on CDNA 4
  (535.5) (the same handbook's network/README.md), so a pair of GPUs moves data 7x slower than the whole node
  (mesh_links; its all_reduce_bench measured 47.7 GB/s bus bandwidth for 2 MI300X and 312.9 for 8). 8 x 400 Gb/s
  NICs per node, 50 GB/s per GPU. gemm_efficiency at 0.87 of each part's bf16 MAMF (the B200's rule above): MI300X
  668.4 of 1307.4 TFLOP/s (ROCm 6.3, 0.511; 781.9 under ROCm 6.2 in the table's earlier version: software moves it),
  MI325X 784.9 (0.600), MI355X 1565.0 (0.622; the MI350X, not measured, taken at the MI355X's fraction).
Older and inference-class parts, as found in shared clusters (the Alibaba openb trace): no NVLink, PCIe only.
- V100 SXM2 16GB: as the 32 GB part with 16 GB of HBM2. (NVIDIA Tesla V100 datasheet.)
- P100 PCIe 16GB: 18.7 TFLOP/s fp16 (no tensor cores, no bf16), HBM2 732 GB/s, PCIe Gen3 32 GB/s total =
  16 per direction. (NVIDIA Tesla P100 datasheet.)
- T4: 65 TFLOP/s fp16 tensor (mixed precision), GDDR6 16 GB at 300 GB/s, PCIe Gen3 32 GB/s total, 70 W.
  (NVIDIA T4 datasheet.)
- A10: 125 TFLOP/s bf16/fp16 dense, GDDR6 24 GB at 600 GB/s, PCIe Gen4 64 GB/s total, 150 W. (NVIDIA A10
  datasheet.)
Device memory (memory_bytes) is what the driver reports (nvidia-smi memory.total), not the marketing figure in
decimal GB: HBM stacks come in binary sizes, so an "80GB" A100 has 81920 MiB (85.9e9 bytes), an H100 SXM/PCIe
81559 MiB, an H200 "141GB" 143771 MiB, an A100-40GB 40960 MiB; Grand Teton's 96 GB part is taken as 96 GiB.
(Issue 14: with 80e9 bytes the planner judged layouts that NeMo runs on H100 not to fit.)
Achievable fractions (used by the planner's cost model, flopwise/plan/cost.py):
- `gemm_efficiency`: the fraction of the dense peak that large, well-shaped bf16/fp16 GEMMs sustain in a
  training loop (cuBLAS at sustained clocks, not a burst). Public cuBLAS/nccl-style benchmarks and the
  Megatron papers put A100 at 250-270 of 312 TFLOP/s for square GEMMs >= 4096 and ~0.75-0.8 sustained under
  the 400 W limit; H100 SXM at ~650-750 of 989 (it is power-limited further from its peak); V100 at
  ~95-105 of 125. Small or skinny per-device matrices fall further, through the roofline in plan/cost.py.
  For the power-capped PCIe parts we assume less (not measured here): T4 (70 W) sustains roughly 25-35 of its
  65 TFLOP/s in long GEMM runs (0.45), A10 (150 W) ~70-80 of 125 (0.6); P100 has no tensor cores and its
  half-precision GEMMs run near peak (0.8).
- `memory_efficiency`: the fraction of HBM bandwidth streaming (elementwise) kernels reach; STREAM-like
  copies reach ~85-90% on A100/H100.
- `attention_efficiency`: the rate of fused causal attention (scaled_dot_product_attention), forward and backward
  together with the backward counted as flops.FLASH_BACKWARD_FLOPS x the forward, as a fraction of the peak. 0 on
  the catalogue's GPUs: the cost model's rates by kernel class apply (plan/cost.py). A measured CPU carries its
  own, and a TOML file may set one.
- `op_overhead_s`: host seconds per op eager PyTorch dispatches, beside the op's arithmetic (Python, the dispatcher,
  autograd). On a CPU it adds to the step: a measured CPU times it (`op_overhead`), and the planner adds it per op of
  flopwise's model (opcount.model_ops) to every micro-batch. 0 on a GPU, whose host queues kernels ahead of them: a
  launch-bound GPU step needs a measurement there (benchmarks/RESULTS.md, "Blocks too small to keep the GPU busy").
On a CPU there is no datasheet peak: `cpu_accelerator()` measures this machine's fp32 matmul rate (the best of a
short run of one GEMM: the peak; the run's median over it: gemm_efficiency, as on a GPU the sustained rate over the
burst), the median rate of causal attention forward and backward at a CPU-sized shape over that peak
(ATTENTION_PROBE: attention_efficiency), the host time per op (op_overhead_s) and its memory copy bandwidth, and
labels the result as measured, so CPU MFU reads "fraction of this machine's measured matmul peak". Its "link" (gloo
between processes over loopback TCP) gets CPU_LINK_BANDWIDTH until `flopwise plan calibrate` fits it to measured
runs. On a measured device each efficiency is relative to one start-up timing of one shape, which a model's own
kernels may beat, so a calibrated one may exceed 1 (up to MEASURED_EFFICIENCY_CEILING).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from flopwise.atomic import atomic_write_text
from flopwise.errors import ConfigError
from flopwise.flops import FLASH_BACKWARD_FLOPS, causal_attention_flops
from flopwise.userfiles import read_toml

GB = 1e9
MIB = 2**20
GIB = 2**30
TFLOPS = 1e12


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_flops: float  # dense bf16 (fp16 on V100) FLOP/s
    memory_bytes: float  # device memory, bytes
    memory_bandwidth: float  # bytes/s
    link_bandwidth: float  # intra-node (NVLink) bytes/s per GPU, one direction
    measured: bool = False  # True when the peak was measured here, not taken from a datasheet
    gemm_efficiency: float = 0.75  # sustained fraction of peak for large GEMMs (see module docstring)
    memory_efficiency: float = 0.85  # fraction of memory_bandwidth that streaming kernels reach
    # fused causal attention's sustained rate, forward and backward together, as a fraction of peak_flops; 0 (a TOML
    # file leaves the key out): the cost model's default for the part's class (module docstring; measured on a CPU)
    attention_efficiency: float = 0.0
    # host seconds per op eager PyTorch dispatches, beside its arithmetic; measured on a CPU, where it adds to the step
    # (a GPU's host runs ahead of its kernels: not modelled there, 0)
    op_overhead_s: float = 0.0
    fp8_peak_flops: float = 0.0  # dense FP8 FLOP/s; 0: no FP8 tensor cores
    fp4_peak_flops: float = 0.0  # dense FP4 FLOP/s (NVFP4, MXFP4 training); 0: no FP4 tensor cores
    # dense IEEE FP32 FLOP/s on the CUDA cores (fp32 GEMMs with TF32 off, PyTorch's default); 0: not given (on a
    # measured device peak_flops is already the fp32 rate)
    fp32_peak_flops: float = 0.0
    tf32_peak_flops: float = 0.0  # dense TF32 tensor-core FLOP/s; 0: no TF32 tensor cores (before Ampere; a CPU)
    network_bandwidth: float = 25 * GB  # inter-node NIC bytes/s per GPU, one direction (reference system)
    # tensor cores that take block-scaled FP8 (MXFP8: one E8M0 scale per 32 elements) at the FP8 rate: Blackwell's
    # fifth-generation Tensor Cores (NVIDIA Blackwell architecture technical brief); Hopper's take per-tensor scales
    block_scaled_fp8: bool = False
    # GPUs one NVLink domain spans where it is not the server: more (GB200 NVL72: a rack of 72) or fewer (H100 PCIe:
    # bridged pairs, wider groups crossing PCIe at pcie_bandwidth); 0: the node
    nvlink_domain_gpus: int = 0
    # PCIe bytes/s per GPU, one direction, for groups wider than an NVLink domain smaller than the node; 0: not given
    pcie_bandwidth: float = 0.0
    # a fully connected mesh inside the node (AMD Infinity Fabric): the direct links each GPU has, one to each other
    # GPU, which share link_bandwidth, so a group of g GPUs in a node moves data over g - 1 of them; 0: a switched
    # fabric (NVSwitch), where a pair reaches link_bandwidth (plan.spec.Cluster.intra_link)
    mesh_links: int = 0
    # FlashAttention-2 and the fused attention of cuDNN and Transformer Engine run on it: Ampere or newer (the
    # flash-attention README; TE's backend selection asks for sm80). False for Volta, Pascal and Turing, where each stack
    # runs its own fallback (Software.flash_fallback)
    flash_attention: bool = True
    # bf16 tensor cores (Ampere and newer); False for Volta, Pascal and Turing, whose training precision is fp16
    bf16: bool = True
    # FP4 tensor cores that take NVIDIA's NVFP4 scales (an E4M3 scale per 16 elements under a per-tensor one), as
    # Blackwell's do; False where they take only the OCP MX formats (AMD's CDNA 4: MXFP4). Only with fp4_peak_flops
    nvfp4: bool = True

    @property
    def peak_label(self) -> str:
        return "measured matmul peak" if self.measured else "datasheet dense peak"

    def full_precision_peak(self, tf32: bool) -> float:
        """The dense rate of 4-byte GEMMs: TF32 tensor cores (`tf32`) or IEEE fp32 (a measured device's own peak);
        0 where the part has none or its file does not say."""
        if self.measured:
            return 0.0 if tf32 else self.peak_flops
        return self.tf32_peak_flops if tf32 else self.fp32_peak_flops

    @property
    def collectives(self) -> str:
        """The collective library its ranks train over: gloo on a measured CPU (cpu_accelerator), NCCL on a GPU."""
        return "gloo" if self.measured else "nccl"


CATALOGUE: dict[str, Accelerator] = {
    a.name: a
    for a in (
        Accelerator("V100-32GB", 125 * TFLOPS, 32 * GB, 900 * GB, 150 * GB, gemm_efficiency=0.80,
                    fp32_peak_flops=15.7 * TFLOPS, flash_attention=False, bf16=False),
        Accelerator("A100-40GB", 312 * TFLOPS, 40960 * MIB, 1555 * GB, 300 * GB, gemm_efficiency=0.75,
                    fp32_peak_flops=19.5 * TFLOPS, tf32_peak_flops=156 * TFLOPS),
        Accelerator("A100-80GB", 312 * TFLOPS, 81920 * MIB, 2039 * GB, 300 * GB, gemm_efficiency=0.75,
                    fp32_peak_flops=19.5 * TFLOPS, tf32_peak_flops=156 * TFLOPS),
        Accelerator("H100-SXM", 989 * TFLOPS, 81559 * MIB, 3350 * GB, 450 * GB, gemm_efficiency=0.70,
                    fp8_peak_flops=1979 * TFLOPS, network_bandwidth=50 * GB,
                    fp32_peak_flops=67 * TFLOPS, tf32_peak_flops=494.5 * TFLOPS),
        Accelerator("H100-PCIe", 756 * TFLOPS, 81559 * MIB, 2000 * GB, 300 * GB, gemm_efficiency=0.65,
                    fp8_peak_flops=1513 * TFLOPS, network_bandwidth=50 * GB, nvlink_domain_gpus=2,
                    pcie_bandwidth=64 * GB,
                    fp32_peak_flops=51 * TFLOPS, tf32_peak_flops=378 * TFLOPS),
        Accelerator("H200", 989 * TFLOPS, 143771 * MIB, 4800 * GB, 450 * GB, gemm_efficiency=0.72,
                    fp8_peak_flops=1979 * TFLOPS, network_bandwidth=50 * GB,
                    fp32_peak_flops=67 * TFLOPS, tf32_peak_flops=494.5 * TFLOPS),
        # Meta's Grand Teton H100 (torchtitan's benchmarks): 96 GB HBM2e at 2.4 TB/s, 500 W power limit
        Accelerator("H100-GT-500W", 989 * TFLOPS, 96 * GIB, 2400 * GB, 450 * GB, gemm_efficiency=0.63,
                    fp8_peak_flops=1979 * TFLOPS, network_bandwidth=50 * GB,
                    fp32_peak_flops=67 * TFLOPS, tf32_peak_flops=494.5 * TFLOPS),
        Accelerator("B200", 2250 * TFLOPS, 180 * GB, 8000 * GB, 900 * GB, gemm_efficiency=0.68,
                    fp8_peak_flops=4500 * TFLOPS, fp4_peak_flops=9000 * TFLOPS, network_bandwidth=50 * GB,
                    block_scaled_fp8=True, fp32_peak_flops=80 * TFLOPS, tf32_peak_flops=1100 * TFLOPS),
        Accelerator("GB200", 2500 * TFLOPS, 186 * GB, 8000 * GB, 900 * GB, gemm_efficiency=0.60,
                    fp8_peak_flops=5000 * TFLOPS, fp4_peak_flops=10000 * TFLOPS, network_bandwidth=50 * GB,
                    block_scaled_fp8=True, nvlink_domain_gpus=72,
                    fp32_peak_flops=90 * TFLOPS, tf32_peak_flops=1250 * TFLOPS),
        Accelerator("B300", 2250 * TFLOPS, 288 * GB, 8000 * GB, 900 * GB, gemm_efficiency=0.684,
                    fp8_peak_flops=4500 * TFLOPS, fp4_peak_flops=15000 * TFLOPS, network_bandwidth=100 * GB,
                    block_scaled_fp8=True, fp32_peak_flops=80 * TFLOPS, tf32_peak_flops=1125 * TFLOPS),
        Accelerator("GB300", 2500 * TFLOPS, 288 * GB, 8000 * GB, 900 * GB, gemm_efficiency=0.642,
                    fp8_peak_flops=5000 * TFLOPS, fp4_peak_flops=15000 * TFLOPS, network_bandwidth=100 * GB,
                    block_scaled_fp8=True, nvlink_domain_gpus=72,
                    fp32_peak_flops=80 * TFLOPS, tf32_peak_flops=1250 * TFLOPS),
        Accelerator("GH200", 989 * TFLOPS, 96 * GB, 4000 * GB, 450 * GB, gemm_efficiency=0.72,
                    fp8_peak_flops=1979 * TFLOPS, network_bandwidth=25 * GB,
                    fp32_peak_flops=67 * TFLOPS, tf32_peak_flops=494.5 * TFLOPS),
        Accelerator("MI300X", 1307.4 * TFLOPS, 192 * GIB, 5300 * GB, 448 * GB, gemm_efficiency=0.445,
                    fp8_peak_flops=2614.9 * TFLOPS, network_bandwidth=50 * GB, mesh_links=7,
                    fp32_peak_flops=163.4 * TFLOPS, tf32_peak_flops=653.7 * TFLOPS),
        Accelerator("MI325X", 1307.4 * TFLOPS, 256 * GIB, 6000 * GB, 448 * GB, gemm_efficiency=0.522,
                    fp8_peak_flops=2614.9 * TFLOPS, network_bandwidth=50 * GB, mesh_links=7,
                    fp32_peak_flops=163.4 * TFLOPS, tf32_peak_flops=653.7 * TFLOPS),
        Accelerator("MI350X", 2307 * TFLOPS, 288 * GIB, 8000 * GB, 535.5 * GB, gemm_efficiency=0.541,
                    fp8_peak_flops=4614 * TFLOPS, fp4_peak_flops=9228 * TFLOPS, nvfp4=False, network_bandwidth=50 * GB,
                    mesh_links=7, block_scaled_fp8=True, fp32_peak_flops=157.3 * TFLOPS),
        Accelerator("MI355X", 2516.6 * TFLOPS, 288 * GIB, 8000 * GB, 535.5 * GB, gemm_efficiency=0.541,
                    fp8_peak_flops=5033.2 * TFLOPS, fp4_peak_flops=10066.4 * TFLOPS, nvfp4=False,
                    network_bandwidth=50 * GB, mesh_links=7, block_scaled_fp8=True,
                    fp32_peak_flops=157.3 * TFLOPS),
        Accelerator("V100-16GB", 125 * TFLOPS, 16 * GB, 900 * GB, 150 * GB, gemm_efficiency=0.80,
                    fp32_peak_flops=15.7 * TFLOPS, flash_attention=False, bf16=False),
        Accelerator("P100", 18.7 * TFLOPS, 16 * GB, 732 * GB, 16 * GB, gemm_efficiency=0.80,
                    fp32_peak_flops=9.3 * TFLOPS, flash_attention=False, bf16=False),
        Accelerator("T4", 65 * TFLOPS, 16 * GB, 300 * GB, 16 * GB, gemm_efficiency=0.45, memory_efficiency=0.80,
                    fp32_peak_flops=8.1 * TFLOPS, flash_attention=False, bf16=False),
        Accelerator("A10", 125 * TFLOPS, 24 * GB, 600 * GB, 32 * GB, gemm_efficiency=0.60, memory_efficiency=0.80,
                    fp32_peak_flops=31.2 * TFLOPS, tf32_peak_flops=62.5 * TFLOPS),
    )
}
# the export variants: the A100's and H100's silicon with NVLink cut to 400 GB/s total (module docstring)
for _base, _variant in (("A100-80GB", "A800-80GB"), ("H100-SXM", "H800-SXM")):
    CATALOGUE[_variant] = dataclasses.replace(CATALOGUE[_base], name=_variant, link_bandwidth=200 * GB)
# the GH200's HBM3e form: the same die and node, more and faster memory (module docstring)
CATALOGUE["GH200-144GB"] = dataclasses.replace(CATALOGUE["GH200"], name="GH200-144GB", memory_bytes=144 * GB,
                                               memory_bandwidth=4900 * GB)
# GPUs whose cost-model constants were fitted on published measured runs: the GPUs of
# benchmarks/planner_calibration/fit.csv (issue 14).
FITTED = frozenset({"A100-40GB", "A100-80GB", "H100-SXM", "H100-GT-500W", "H200"})
# GPUs whose constants published runs calibrate: the fitted ones and the export variants of their silicon, checked on a
# blind holdout; then each part a later fresh holdout tested by the rule declared before it: in if its runs in that set
# were within 8% / 25%, out if they missed, a fitted part too. The MI325X and MI350X by the forty-first (7 MLPerf runs,
# 4.8% / 19.4%); the MI300X, on which none ran, stays out, and so does the MI355X since the forty-third (6 MXFP4 runs,
# 14.6% too fast); the B300 joined with the forty-fifth (4 runs, 6.8% / 14.9%) and left with the forty-eighth (5 runs,
# 11.2% / 13.7%, NVFP4 too fast); the GB300 missed in the forty-fifth to forty-seventh (8.1% / 15.9%, 7.7% / 26.8%,
# 13.9% / 27.2%) and joined with the forty-eighth (6 runs, 6.7% / 20.5%) and held in the forty-ninth (4, 1.0% / 1.7%):
# over all its 48 runs it is 12.2% off, which its plans' track record says. The H100-SXM, fitted, left with the
# fiftieth (9 Megatron-Bridge / NeMo table runs of 2025-26 releases, 9.1% / 11.5%, every one faster than planned) and
# stayed out on the fifty-first (8 PyTorch-native runs, 12.7% / 26.9%). The others' constants are datasheet figures, at
# most with a GEMM benchmark (plan.search.calibration_notes says which case a plan is in).
CALIBRATED = frozenset({"A100-40GB", "A100-80GB", "A800-80GB", "H800-SXM", "H100-GT-500W", "H200", "MI325X", "MI350X",
                        "GB300"})
# GPUs whose constants rest on published runs, fitted or checked (the others' on datasheets)
FROM_RUNS = FITTED | CALIBRATED
# the catalogue's parts without FlashAttention-2 (Accelerator.flash_attention: Volta, Pascal, Turing)
NO_FLASH_ATTENTION = frozenset(a.name for a in CATALOGUE.values() if not a.flash_attention)


def training_precision(acc: Accelerator) -> str:
    """The precision a run trains in on `acc` unless told otherwise: fp32 on a measured CPU (as flopwise's trainer
    runs it), fp16 on a part without bf16, bf16 on the rest."""
    return "fp32" if acc.measured else "bf16" if acc.bf16 else "fp16"
# gloo collectives between processes on one machine (loopback TCP): ~1-3 GB/s per direction; a starting
# value that `flopwise plan calibrate` replaces with the user's own.
CPU_LINK_BANDWIDTH = 2 * GB
# Collective communication (used by plan/cost.py). Bus bandwidth that NCCL reaches, as a fraction of the
# per-GPU one-direction link rate: nccl-tests all_reduce on DGX A100 (NVSwitch, 300 GB/s) reports ~230-240
# GB/s bus bandwidth (0.78); over InfiniBand HDR (200 Gb/s = 25 GB/s per GPU) ~22-23 GB/s (0.9).
NVLINK_BUS_EFFICIENCY = 0.78
NETWORK_BUS_EFFICIENCY = 0.90
COLLECTIVE_LATENCY_S = 20e-6  # per collective / point-to-point call: launch + ring start-up (NCCL, ~10-30 us)

_ALIASES = {"v100": "V100-32GB", "a100": "A100-80GB", "h100": "H100-SXM", "h100-sxm5": "H100-SXM", "a800": "A800-80GB",
            "h800": "H800-SXM"}


def get_accelerator(name: str) -> Accelerator:
    """Look up a catalogue entry by name (case-insensitive; a few short aliases accepted)."""
    by_lower = {k.lower(): v for k, v in CATALOGUE.items()}
    key = name.lower()
    if key in by_lower:
        return by_lower[key]
    if key in _ALIASES:
        return CATALOGUE[_ALIASES[key]]
    raise ConfigError(f"unknown accelerator {name!r}; choose one of: {', '.join(CATALOGUE)}, cpu (or a TOML file)")


# A measured CPU's efficiencies are fractions of start-up timings of one shape each (a 1024-square GEMM, a 64 MiB
# copy, one attention shape). A model's own kernels can run faster than those: on this project's 2-core CPU the
# demo-width GEMMs (1024 tokens x 256-2048) ran 3-7% above the square GEMM's best, and the elementwise passes over
# activations that fit the caches at about 2.5x the DRAM copy's rate the planner costs them at (benchmarks/RESULTS.md,
# "Calibrating a CPU past its start-up timings"). A file calibrated on such runs may hold efficiencies up to this.
# (MFU stays against the start-up peak, so a plan on such a file may print one above 100%.)
MEASURED_EFFICIENCY_CEILING = 4.0
# the accelerator's efficiencies (module docstring): fractions of the figure each scales, bounded by efficiency_ceiling
EFFICIENCIES = ("gemm_efficiency", "memory_efficiency", "attention_efficiency")


def efficiency_ceiling(measured: bool) -> float:
    """The largest efficiency an accelerator may carry: 1 (a fraction of a datasheet figure), or more on a measured
    device."""
    return MEASURED_EFFICIENCY_CEILING if measured else 1.0


def load_accelerator(path: str | Path) -> Accelerator:
    """Read a user-defined accelerator from TOML, figures in natural units:
    name, peak_tflops, memory_gb, memory_bandwidth_gbps, link_bandwidth_gbps (per direction);
    optionally gemm_efficiency, memory_efficiency and attention_efficiency (fractions, see the module docstring;
    up to MEASURED_EFFICIENCY_CEILING with measured = true), fp8_peak_tflops, fp4_peak_tflops (dense; for NVFP4 and
    MXFP4 plans), fp32_peak_tflops (the CUDA cores' FP32 rate: fp32 plans with TF32 off), tf32_peak_tflops (dense TF32
    tensor cores: tf32 plans), op_overhead_us (host microseconds per op flopwise's trainer dispatches, where they
    add to the step, as on a CPU), network_bandwidth_gbps (inter-node, per GPU and direction), nvlink_domain_gpus
    (GPUs one NVLink domain spans where it is not the server: 72 for an NVL72 rack, 2 for bridged PCIe pairs, whose
    wider groups cross PCIe at pcie_bandwidth_gbps, per GPU and direction), mesh_links (a mesh inside the node, as
    AMD's Infinity Fabric: the direct links of each GPU, 7 on an 8-GPU board, which share link_bandwidth_gbps)
    and block_scaled_fp8
    (true where the tensor cores take MX scales, MXFP8 at the FP8 rate and MXFP4 at the FP4 rate, as Blackwell's and
    CDNA 4's do), flash_attention (false for a part
    FlashAttention-2 does not run on, as Volta, Pascal and Turing: each stack's fallback kernel is costed) and bf16
    (false for a part without bf16 tensor cores, as those: it plans fp16 and refuses bf16), nvfp4 (false where the FP4
    tensor cores take only the OCP MX formats, as AMD's CDNA 4: mxfp4 plans, nvfp4 refused). FP4 and block scales need
    fp8_peak_tflops."""
    path = Path(path)
    data = read_toml(path, "accelerator file")
    required = ("name", "peak_tflops", "memory_gb", "memory_bandwidth_gbps", "link_bandwidth_gbps")
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"accelerator file {path}: missing key(s) {', '.join(missing)}")
    optional = EFFICIENCIES
    rates = {"fp8_peak_tflops": ("fp8_peak_flops", TFLOPS), "fp4_peak_tflops": ("fp4_peak_flops", TFLOPS),
             "fp32_peak_tflops": ("fp32_peak_flops", TFLOPS), "tf32_peak_tflops": ("tf32_peak_flops", TFLOPS),
             "network_bandwidth_gbps": ("network_bandwidth", GB), "op_overhead_us": ("op_overhead_s", 1e-6),
             "pcie_bandwidth_gbps": ("pcie_bandwidth", GB)}
    flags = ("measured", "block_scaled_fp8", "flash_attention", "bf16", "nvfp4")
    counts = ("nvlink_domain_gpus", "mesh_links")  # whole numbers of GPUs or links, 0: none
    if "peer_bandwidth_gbps" in data:
        raise ConfigError(f"accelerator file {path}: peer_bandwidth_gbps was renamed: give mesh_links (the direct links "
                          "of each GPU, 7 on an 8-GPU board), and link_bandwidth_gbps as all of them together")
    unknown = set(data) - set(required) - set(optional) - set(rates) - set(flags) - set(counts)
    if unknown:
        raise ConfigError(f"accelerator file {path}: unknown key(s) {', '.join(sorted(unknown))}")

    def number(key: str) -> bool:  # TOML's true is an int to Python, and nan / inf are floats
        value = data[key]
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(data["name"], str) or not data["name"].strip():
        raise ConfigError(f"accelerator file {path}: name = {data['name']!r} must be a non-empty string")
    units = {"peak_tflops": TFLOPS, "memory_gb": GB, "memory_bandwidth_gbps": GB, "link_bandwidth_gbps": GB,
             **{key: unit for key, (_, unit) in rates.items()}}
    for key in required[1:]:  # finite in the units the planner computes in, too (1e308 TFLOP/s is not)
        if not number(key) or data[key] <= 0 or not math.isfinite(data[key] * units[key]):
            raise ConfigError(f"accelerator file {path}: {key} = {data[key]!r} must be a positive number (and not so "
                              "large that it overflows)")
    for key in flags:
        if key in data and not isinstance(data[key], bool):
            raise ConfigError(f"accelerator file {path}: {key} = {data[key]!r} must be true or false")
    ceiling = efficiency_ceiling(data.get("measured", False))
    for key in optional:
        if key in data and (not number(key) or not 0 < data[key] <= ceiling):
            why = (f"at most {ceiling:g} (measured = true: relative to start-up timings)" if data.get("measured")
                   else "a fraction in (0, 1]; a measured device (measured = true) may exceed 1")
            raise ConfigError(f"accelerator file {path}: {key} = {data[key]!r} must be {why}")
    for key in rates:  # 0: none (no FP8 / FP4 / TF32 tensor cores, no host time per op); a network is never 0
        low_ok = key != "network_bandwidth_gbps"
        if key in data and (not number(key) or data[key] < 0 or (data[key] == 0 and not low_ok)
                            or not math.isfinite(data[key] * units[key])):
            kind = "a non-negative number" if low_ok else "a positive number (a single node: leave the key out)"
            raise ConfigError(f"accelerator file {path}: {key} = {data[key]!r} must be {kind}")
    for key in counts:
        if key in data and (not number(key) or not isinstance(data[key], int) or data[key] < 0):
            raise ConfigError(f"accelerator file {path}: {key} = {data[key]!r} must be a whole number (0: "
                              f"{'the node' if key == 'nvlink_domain_gpus' else 'no mesh'})")
    if data.get("measured") and (data.get("fp32_peak_tflops") or data.get("tf32_peak_tflops")):
        raise ConfigError(f"accelerator file {path}: a measured device's peak_tflops is its fp32 rate and it has no "
                          "TF32: leave fp32_peak_tflops and tf32_peak_tflops out (or 0)")
    if data.get("pcie_bandwidth_gbps") and not data.get("nvlink_domain_gpus"):
        raise ConfigError(f"accelerator file {path}: pcie_bandwidth_gbps is the link of groups wider than an NVLink "
                          "domain smaller than the node: give nvlink_domain_gpus too (2 for bridged pairs), or leave "
                          "it out (link_bandwidth_gbps is then every intra-node group's link)")
    if data.get("fp4_peak_tflops") and data.get("nvfp4") is False and not data.get("block_scaled_fp8"):
        raise ConfigError(f"accelerator file {path}: FP4 tensor cores that take neither NVIDIA's NVFP4 (nvfp4 = false) "
                          "nor MX scales (no block_scaled_fp8 = true) run no FP4 precision: set one of them")
    if data.get("mesh_links") and data.get("nvlink_domain_gpus"):
        raise ConfigError(f"accelerator file {path}: mesh_links (a mesh of direct links) and nvlink_domain_gpus (a "
                          "switched domain) describe different fabrics: give one")
    for key, why in (("block_scaled_fp8", "the FP8 rate block-scaled GEMMs run at"),
                     ("fp4_peak_tflops", "a part with FP4 tensor cores has FP8 ones")):
        if data.get(key) and not data.get("fp8_peak_tflops"):
            raise ConfigError(f"accelerator file {path}: {key} needs fp8_peak_tflops ({why})")
    return Accelerator(
        data["name"].strip(),
        data["peak_tflops"] * TFLOPS,
        data["memory_gb"] * GB,
        data["memory_bandwidth_gbps"] * GB,
        data["link_bandwidth_gbps"] * GB,
        measured=data.get("measured", False),
        block_scaled_fp8=data.get("block_scaled_fp8", False),
        flash_attention=data.get("flash_attention", True),
        bf16=data.get("bf16", True),
        nvfp4=data.get("nvfp4", True),
        nvlink_domain_gpus=data.get("nvlink_domain_gpus", 0),
        mesh_links=data.get("mesh_links", 0),
        **{k: float(data[k]) for k in optional if k in data},
        **{field: data[key] * unit for key, (field, unit) in rates.items() if key in data},
    )


def accelerator_toml(acc: Accelerator) -> dict:
    """An accelerator in the TOML form `load_accelerator` reads (natural units)."""
    data = {
        "name": acc.name,
        "peak_tflops": acc.peak_flops / TFLOPS,
        "memory_gb": acc.memory_bytes / GB,
        "memory_bandwidth_gbps": acc.memory_bandwidth / GB,
        "link_bandwidth_gbps": acc.link_bandwidth / GB,
        "gemm_efficiency": acc.gemm_efficiency,
        "memory_efficiency": acc.memory_efficiency,
        "fp8_peak_tflops": acc.fp8_peak_flops / TFLOPS,
        "fp4_peak_tflops": acc.fp4_peak_flops / TFLOPS,
        "fp32_peak_tflops": acc.fp32_peak_flops / TFLOPS,
        "tf32_peak_tflops": acc.tf32_peak_flops / TFLOPS,
        "network_bandwidth_gbps": acc.network_bandwidth / GB,
    }
    if acc.attention_efficiency:
        data["attention_efficiency"] = acc.attention_efficiency
    if acc.op_overhead_s:
        data["op_overhead_us"] = acc.op_overhead_s / 1e-6
    if acc.measured:
        data["measured"] = True
    if acc.block_scaled_fp8:
        data["block_scaled_fp8"] = True
    if acc.nvlink_domain_gpus:
        data["nvlink_domain_gpus"] = acc.nvlink_domain_gpus
    if acc.pcie_bandwidth:
        data["pcie_bandwidth_gbps"] = acc.pcie_bandwidth / GB
    if acc.mesh_links:
        data["mesh_links"] = acc.mesh_links
    if not acc.flash_attention:
        data["flash_attention"] = False
    if not acc.bf16:
        data["bf16"] = False
    if not acc.nvfp4:
        data["nvfp4"] = False
    return data


def write_accelerator(acc: Accelerator, path: str | Path) -> Path:
    """Write `acc` as a TOML file `load_accelerator` reads (atomically)."""
    import tomli_w

    path = Path(path)
    atomic_write_text(path, tomli_w.dumps(accelerator_toml(acc)))
    return path


def resolve_accelerator(name_or_path: str) -> Accelerator:
    """A catalogue name, `cpu` (this machine, measured), or a path to a TOML file defining one."""
    if name_or_path.endswith(".toml") or Path(name_or_path).is_file():
        return load_accelerator(name_or_path)
    if name_or_path.lower() == "cpu":
        return cpu_accelerator()
    return get_accelerator(name_or_path)


def match_device_name(device_name: str) -> Accelerator | None:
    """Map a device name as CUDA, ROCm or a paper writes it ('NVIDIA H100 80GB HBM3', 'A100-SXM4-40GB', 'AMD Instinct
    MI300X') to a catalogue
    entry, matching the model as a whole token (so 'A100X', 'RTX A1000', 'A10G' and 'Quadro P1000' match
    nothing); variants the catalogue lacks (NVL and PCIe forms of the H200 / H800, 40 GB or PCIe A800) match nothing.
    A GH200 is the 144 GB part when its name says 144G or HBM3e ('NVIDIA GH200 144G HBM3e'), else the 96 GB one
    ('NVIDIA GH200 480GB' names the superchip's CPU memory)."""
    n = device_name.upper()

    def has(token: str) -> bool:
        return re.search(rf"(?<![A-Z0-9]){token}(?![A-Z0-9])", n) is not None

    pcie, nvl, small = "PCIE" in n, has("NVL"), "40G" in n
    if has("GH200"):
        return CATALOGUE["GH200-144GB" if "144G" in n or "HBM3E" in n else "GH200"]
    if has("GB300"):
        return CATALOGUE["GB300"]
    if has("B300"):
        return CATALOGUE["B300"]
    if has("GB200"):
        return CATALOGUE["GB200"]
    if has("B200"):
        return CATALOGUE["B200"]
    if has("H200") and not (nvl or pcie):
        return CATALOGUE["H200"]
    if has("H100") and not nvl:
        return CATALOGUE["H100-PCIe" if pcie else "H100-SXM"]
    if has("H800") and not (nvl or pcie):
        return CATALOGUE["H800-SXM"]
    if has("A100"):
        return CATALOGUE["A100-40GB" if small else "A100-80GB"]
    if has("A800") and not (small or pcie):
        return CATALOGUE["A800-80GB"]
    if has("V100"):
        return CATALOGUE["V100-16GB" if "16G" in n else "V100-32GB"]
    for name in (n for n in CATALOGUE if n.startswith("MI")):  # 'AMD Instinct MI300X' (not the MI300A APU)
        if has(name):
            return CATALOGUE[name]
    for name in ("A10", "T4", "P100"):
        if has(name):
            return CATALOGUE[name]
    return None


def cpu_seconds() -> float:
    """This process's CPU time per intra-op thread: how long its threads would have taken with the cores to
    themselves. Timing CPU work with it leaves out the other processes sharing the machine, which wall time
    does not (on a GPU, wall time is the device's time)."""
    return time.process_time() / torch.get_num_threads()


def cpu_accelerator(size: int = 1024, seconds: float = 0.5) -> Accelerator:
    """This CPU, as this process's threads see it: peak = the best fp32 matmul rate over a short run, GEMM
    efficiency = the median rate of the same run over that best (`sustained_fraction`), attention efficiency = the
    median rate of causal attention forward and backward at ATTENTION_PROBE over that best, memory bandwidth = the
    best large copy, all timed by `cpu_seconds` (measured once per thread count)."""
    return _cpu_accelerator(size, seconds, torch.get_num_threads())


MIN_GEMM_TIMINGS = 5
# batch, heads, KV heads, tokens, head_dim of the attention timed at start-up: a CPU-sized model's, the demo's `tiny`
# (in fp32 on this project's 2-core CPU its forward and backward ran at 0.044-0.076 TFLOP/s over 2-32 sequences,
# 256-512 tokens and head_dim 32-64, about 0.3 of the GEMM rate: one shape stands for the models a CPU trains;
# benchmarks/cpu_attention.py, benchmarks/RESULTS.md "The CPU's attention rate")
ATTENTION_PROBE = (4, 8, 4, 256, 32)
ATTENTION_SECONDS = 0.15
OVERHEAD_SECONDS = 0.1


def sustained_fraction(rates: list[float]) -> float:
    """The median of repeated timings of one GEMM over their best: what a training loop's back-to-back GEMMs
    sustain of the burst that sets the peak. gemm_efficiency means this on every GPU (module docstring); on a CPU
    the two are measured in the same run. (On this project's 2-core CPU the median 1024-square fp32 GEMM ran at
    0.80-0.83 of the best, and the demo model's own GEMMs at 0.6-0.85 of it: benchmarks/RESULTS.md, "The CPU's
    sustained GEMM rate".)"""
    rates = [r for r in rates if r > 0]
    return statistics.median(rates) / max(rates) if rates else 1.0


def _timed_rates(work, flops: float, seconds: float) -> list[float]:
    """FLOP/s of `work()` (which runs `flops`), timed by `cpu_seconds` back to back for about `seconds`, after
    one untimed call; past the deadline, a few more timings where there are too few for a median (a slow or busy
    CPU), but not forever."""
    work()  # warm up the threads and the allocator
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    tries = 0
    while time.perf_counter() < deadline or (len(rates) < MIN_GEMM_TIMINGS and tries < 10 * MIN_GEMM_TIMINGS):
        tries += 1
        start = cpu_seconds()
        work()
        elapsed = cpu_seconds() - start
        if elapsed > 0:
            rates.append(flops / elapsed)
    return rates


def attention_rate(seconds: float = ATTENTION_SECONDS, shape: tuple[int, int, int, int, int] = ATTENTION_PROBE) -> float:
    """The median FLOP/s of causal scaled_dot_product_attention, forward and backward, at `shape` (batch, heads, KV
    heads, tokens, head_dim) in fp32, the backward counted as FLASH_BACKWARD_FLOPS x the forward (as
    CostModel.layer_compute counts it)."""
    batch, heads, kv_heads, seq, head_dim = shape
    with torch.inference_mode(False), torch.enable_grad():  # callers may hold either off
        q = torch.randn(batch, heads, seq, head_dim, requires_grad=True)
        k = torch.randn(batch, kv_heads, seq, head_dim, requires_grad=True)
        v = torch.randn(batch, kv_heads, seq, head_dim, requires_grad=True)
        grad = torch.randn(batch, heads, seq, head_dim)

        def forward_backward() -> None:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            torch.autograd.grad(out, (q, k, v), grad)

        flops = causal_attention_flops(seq, head_dim, heads, batch) * (1.0 + FLASH_BACKWARD_FLOPS)
        rates = _timed_rates(forward_backward, flops, seconds)
    return statistics.median(rates) if rates else 0.0


def op_overhead(seconds: float = OVERHEAD_SECONDS) -> float:
    """Host seconds per dispatched op: the median time of a training step's forward and backward through a narrow
    copy of the demo's model (opcount.narrow: two `tiny` blocks at widths too small for their arithmetic to count),
    over the ops it dispatches (opcount.count_ops)."""
    from flopwise.models.config import get_preset
    from flopwise.opcount import count_ops, narrow, training_step

    # (the timed steps accumulate gradients after the first, as a step's micro-batches do; the count is of one;
    # the clock is CPU time per thread, the trainer's own on a CPU)
    with torch.inference_mode(False), torch.enable_grad():  # callers may hold either off
        forward = training_step(narrow(get_preset("tiny"), 2))
        ops = sum(count_ops(forward))
        calls = _timed_rates(lambda: forward().backward(), 1.0, seconds)  # calls per second
    return statistics.median(1.0 / c for c in calls) / ops if calls and ops else 0.0


@functools.lru_cache(maxsize=4)
def _cpu_accelerator(size: int, seconds: float, threads: int) -> Accelerator:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    rates = _timed_rates(lambda: torch.mm(a, b), 2.0 * size**3, seconds)
    peak = max(rates, default=0.0)
    try:
        import psutil  # optional

        mem = float(psutil.virtual_memory().total)
    except ImportError:
        mem = float(_meminfo_total())
    # the copy bandwidth is itself a measured rate, so large copies reach all of it
    efficiency = sustained_fraction(rates)
    attention = _or_default(attention_rate, "the attention rate")
    return Accelerator("CPU", peak, mem, _copy_bandwidth(), CPU_LINK_BANDWIDTH, measured=True,
                       gemm_efficiency=efficiency, memory_efficiency=1.0,
                       attention_efficiency=min(1.0, attention / peak) if peak > 0 else 0.0,
                       op_overhead_s=_or_default(op_overhead, "the host time per op"))


# each efficiency is a fraction of a measured rate: merged as a rate (fraction x base), over the measurements that
# carry one (a record older than a timing reads 0), then divided by the merged base
_FRACTION_OF = {"gemm_efficiency": "peak_flops", "attention_efficiency": "peak_flops",
                "memory_efficiency": "memory_bandwidth"}


def merge_measured(accs: list[Accelerator], best_peak: bool = False) -> Accelerator:
    """One accelerator for several measurements of one CPU (each process times it at start-up, and the figures differ
    from run to run): every figure the median of the measurements, each efficiency as a median rate, a figure some
    measurements lack (0) the median of those that have it. With `best_peak`, the peak and the memory bandwidth are the
    best measured instead, so MFU against them stays at most 100% (a distributed run's ranks)."""
    if not accs:
        raise ValueError("no measurements to merge")
    names = sorted({a.name for a in accs})
    if len(names) > 1:
        raise ConfigError(f"measurements of different accelerators ({', '.join(names)}): one device at a time")

    def merged(field: str) -> float:
        values = [getattr(a, field) for a in accs]
        if best_peak and field in ("peak_flops", "memory_bandwidth"):
            return max(values)
        measured = [v for v in values if v > 0] if field == "op_overhead_s" else values
        return float(statistics.median(measured)) if measured else 0.0

    floats = [f.name for f in dataclasses.fields(Accelerator) if f.type in (float, "float")]
    out = dataclasses.replace(accs[0], **{f: merged(f) for f in floats})
    for fraction, base in _FRACTION_OF.items():
        rates = [getattr(a, fraction) * getattr(a, base) for a in accs if getattr(a, fraction) > 0]
        if rates and getattr(out, base) > 0:
            out = dataclasses.replace(out, **{fraction: min(1.0, statistics.median(rates) / getattr(out, base))})
    return out


def _or_default(probe, what: str) -> float:
    """A start-up timing that the planner can do without: where this torch cannot run it, 0 (the planner's default
    for the figure) and a warning, not a failed start."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - any failure of an optional timing leaves the default
        logging.getLogger(__name__).warning("could not time %s on this CPU (%s: %s); the planner uses its default",
                                            what, type(exc).__name__, exc)
        return 0.0


def _copy_bandwidth(megabytes: int = 64, repeats: int = 3) -> float:
    """Bytes/s one large tensor copy moves (read + write), best of a few."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = cpu_seconds()
        dst.copy_(src)
        best = min(best, max(cpu_seconds() - start, 1e-9))
    return 2 * src.numel() * 4 / best


def _meminfo_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def detect(device: torch.device | str | None = None) -> Accelerator:
    """The accelerator a run is using: a catalogue entry for a known GPU, a measured CPU otherwise.

    An unknown GPU gets its name and memory from CUDA and no peak (MFU then reads 0)."""
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        known = match_device_name(props.name)
        if known is not None:
            return known
        return Accelerator(props.name, 0.0, float(props.total_memory), 0.0, 0.0)
    return cpu_accelerator()
