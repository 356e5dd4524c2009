"""Print the README's model table (parameters and MACs at 224 px), computed by the code.

    python experiments/model_table.py
"""

import moga_analysis  # noqa: F401
from moga_analysis.models.profile import model_table

if __name__ == "__main__":
    names = ["moganet_xtiny", "moganet_tiny", "moganet_small", "moganet_base", "moganet_large", "moganet_xlarge"]
    print("| model | alias | params (M) | MACs @224 (G) | official weights |")
    print("|---|---|---|---|---|")
    aliases = {"xtiny": "xt", "tiny": "t", "small": "s", "base": "b", "large": "l", "xlarge": "xl"}
    for name, row in model_table(names).items():
        tags = "`.in1k`, `.in1k_256`" if name in ("moganet_xtiny", "moganet_tiny") else "`.in1k`"
        alias = "moganet_" + aliases[name.split("_")[1]]
        print(f"| `{name}` | `{alias}` | {row['params_M']:.2f} | {row['gmacs']:.3f} | {tags} |")
