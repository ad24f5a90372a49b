"""The search-efficiency benchmark, side by side (issue 14): Optuna TPE with a MedianPruner and
with a HyperbandPruner, Ray Tune's PopulationBasedTraining, hpsearch's single fork from a base
and its fork tree, on the same tasks, search spaces and budget, cost counted in training samples.

- `records`: what one search leaves (a curve of points), and the JSON it is kept in;
- `arms`: running the hpsearch and Optuna arms (all through hpsearch) to a budget in samples;
- `pbt`: the Ray Tune PBT arm, on hpsearch's own training loop;
- `analysis`: the target, who reached it at what cost, the summaries;
- `report`: the tables and the figure.

`benchmarks/search_efficiency.py` is the command.
"""
