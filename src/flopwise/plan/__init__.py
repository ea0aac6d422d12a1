"""The planner: predict step time, memory and cost of a parallel layout, and search for the best one.

- spec.py      Cluster, Training (the layout and `parse_layout` are flopwise.layout's, re-exported here)
- memory.py    memory per rank (ZeRO model states, Korthikanti activations, in-flight micro-batches)
- cost.py      step time and its breakdown (compute, recompute, bubble, TP, EP, PP, DP, optimizer, CP, host, straggler)
- search.py    layout search with time- and memory-balanced pipeline splits; infeasibility explanations
- budget.py    training FLOPs, PF-days, Chinchilla-optimal sizes, time on N GPUs
- validate.py  prediction error against published measured runs
- calibrate.py fit the device-efficiency constants to measured runs (`flopwise plan calibrate`)
"""

from flopwise.layout import Layout, parse_layout
from flopwise.layout import check as check_layout
from flopwise.plan.budget import Budget, budget
from flopwise.plan.calibrate import Calibration, Observation
from flopwise.plan.calibrate import fit as fit_constants
from flopwise.plan.cost import CostModel, Plan
from flopwise.plan.search import SearchResult, balanced_split, best_split, search
from flopwise.plan.spec import SOFTWARE, Cluster, Training
from flopwise.plan.validate import validate_files

__all__ = [
    "SOFTWARE",
    "Budget",
    "Calibration",
    "Cluster",
    "CostModel",
    "Layout",
    "Observation",
    "Plan",
    "SearchResult",
    "Training",
    "balanced_split",
    "best_split",
    "budget",
    "check_layout",
    "fit_constants",
    "parse_layout",
    "search",
    "validate_files",
]
