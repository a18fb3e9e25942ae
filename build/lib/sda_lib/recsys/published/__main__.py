"""`python -m sda_lib.recsys.published`: the paper's tables as shipped, then, as the last line, the
abstract's four aggregates recomputed from the shipped Table 1 (JSON, percent)."""

from __future__ import annotations

import json
import sys

import pandas as pd

from . import ABSTRACT, GRADIENT_COSINES, REFERENCE, SOURCE, aggregate_cells, aggregates, table1, table2


def main(argv: list[str] | None = None) -> int:
    """Print the shipped tables and, as the last line, the four aggregates recomputed from Table 1
    (takes no arguments)."""
    if argv:
        print(f"sda published takes no arguments, got {argv}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(f"{SOURCE}\n\nTable 1\n{table1().to_string(float_format='{:.4f}'.format)}\n")
        shown = table2(consistent=True)
        print(f"Table 2 (Δ as a fraction)\n{shown.to_string(float_format='{:.4f}'.format)}")
        print("\n".join(shown.attrs["notes"][1:]) + "\n")
        print(f"Section 3.3.3 gradient cosines: {json.dumps(GRADIENT_COSINES)}\n")
    values = aggregates(table1())
    print(
        f"Abstract's aggregates: mean over the {aggregate_cells(table1())['overall_h10']} dataset x model "
        f"cells of SDA's relative gain over {REFERENCE} (published {json.dumps(ABSTRACT)}):"
    )
    print(json.dumps({key: round(value, 4) for key, value in values.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
