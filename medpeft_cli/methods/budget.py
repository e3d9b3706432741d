"""Parameter budgets: choose a method's size knob so its trainable count lands closest to a budget.

The budget counts the method's own trainable parameters (the classification head excluded: it is the
same for every method and depends only on the number of classes). `0.5%` means 0.5 % of the
backbone's parameters without its head. Counting happens on shape-only copies of the backbone
(methods.accounting), so a ViT-B/16 search takes seconds and needs no weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medpeft_cli.config import BUDGET_PATTERN
from medpeft_cli.errors import UserError
from medpeft_cli.methods.accounting import copy_backbone, head_params, method_params
from medpeft_cli.methods.catalog import list_methods
from medpeft_cli.methods.registry import MethodInfo, check_supported, validate_options

MAX_KNOB = 4096  # search bound for knobs that take any positive integer (rank, bottleneck, prompt length)


@dataclass(frozen=True)
class BudgetFit:
    target: int  # the budget as a number of parameters
    knob: str
    value: int  # the knob value chosen
    achieved: int  # the method's trainable parameters (head excluded) at that value
    backbone_params: int


def parse_budget(text: str, backbone_params: int) -> int:
    """'0.5%' (of the backbone's parameters), '150000', '150k' or '1.2M' -> a parameter count."""
    match = BUDGET_PATTERN.match(str(text))
    if not match:
        raise UserError(f"--param-budget {text!r} not understood; write a percentage of the backbone (0.5%) or a parameter count (150000, 150k, 1.2M)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    count = number * {"%": backbone_params / 100.0, "k": 1e3, "m": 1e6, "": 1.0}[unit]
    if count < 1:
        raise UserError(f"--param-budget {text!r} is less than one parameter; give a larger budget")
    return round(count)


def fit_budget(info: MethodInfo, options: dict[str, Any], budget: str, backbone) -> BudgetFit:
    """The knob value whose count is closest to the budget (ties: the smaller value)."""
    if info.knob is None:
        sized = ", ".join(m.name for m in list_methods("classification") if m.knob)
        raise UserError(f"method {info.name!r} has a fixed size, so --param-budget cannot set it; methods with a size knob: {sized}")
    check_supported(info, backbone.family, backbone.name)
    base = backbone.num_params - head_params(backbone)
    target = parse_budget(budget, base)

    counts: dict[int, int] = {}

    def count(value: int) -> int:
        if value not in counts:
            counts[value] = method_params(info, backbone, {**options, info.knob: value})
        return counts[value]

    if info.knob_values is not None:
        values = info.knob_values(copy_backbone(backbone), validate_options(info, options))
        if not values:
            raise UserError(f"no valid {info.knob} exists for method {info.name!r} on {backbone.name}")
        for value in values:  # short lists (e.g. block sizes dividing the layer widths): count them all
            count(value)
    else:  # counts grow with the knob: binary search for the first value at or above the budget
        count(1)
        count(MAX_KNOB)
        low, high = 1, MAX_KNOB
        while low < high:
            mid = (low + high) // 2
            if count(mid) >= target:
                high = mid
            else:
                low = mid + 1
        count(low)
        if low > 1:
            count(low - 1)
    smallest, largest = min(counts.values()), max(counts.values())
    if not smallest <= target <= largest:
        raise UserError(
            f"method {info.name!r} cannot reach a budget of {target:,} parameters on {backbone.name}: its {info.knob} spans "
            f"{smallest:,} to {largest:,} method parameters; choose a budget in that range"
        )
    value = min(counts, key=lambda v: (abs(counts[v] - target), v))
    return BudgetFit(target, info.knob, value, counts[value], base)
