"""The numbers the SDA paper publishes, for the report's "published" column.

Only the abstract's aggregates could be read (arXiv 2512.06883, v1 and v2 abstracts): Table 1,
Table 2 and Figure 3 themselves were not retrievable, so no per-dataset or per-model number is
recorded here and none may be invented. The abstract does not say over which baseline the gains
are measured nor how they are averaged; `report.headline` states the workbench's definition next
to its numbers.
"""

SOURCE = "arXiv 2512.06883 abstract (Rao et al., SDA); the paper's tables were not retrievable"

# Relative gains, as fractions.
ABSTRACT = {
    "average H@10 gain": 0.0615,  # "average gains of 6.15% ... in Hit@10"
    "average N@10 gain": 0.0864,  # "... and 8.64% in NDCG@10"
    # "up to 12.83% and 18.70% gains on long-tail items": read as H@10 then N@10, the order of the
    # abstract's preceding sentence (the abstract does not name the metrics here).
    "largest tail H@10 gain": 0.1283,
    "largest tail N@10 gain": 0.1870,
}
